"""VideoCrafter's first release, VideoControl (`vc0-256-depth`): a control video's depth guides the new video. Every
stage against the original's numbers (../shared/reference section 8, `tiny/vc0_depth`), the full-size layout, the
command line, and the errors of bad control inputs."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from reference import assert_close, reference_dir
from safetensors.torch import load_file

from vcraft.config import load_config, load_preset
from vcraft.pipeline.control import control_indices, scaled_frames, video_tensor
from vcraft.pipeline.inputs import read_footage
from vcraft.sampling.conditioning import Conditioning
from vcraft.sampling.ddim import sample as ddim_sample
from vcraft.sampling.denoisers import Denoiser

ROOT = reference_dir() / "tiny" / "vc0_depth"
BASE = reference_dir() / "tiny" / "vc0_base" / "model.ckpt"
_cache: dict = {}


def fixture():
    if not _cache:
        from vcraft import TextToVideo

        pipe = TextToVideo.from_pretrained(str(ROOT / "config.yaml"), BASE, device="cpu", adapter=ROOT / "adapter.pth")
        _cache.update(pipe=pipe, cases=load_file(ROOT / "cases.safetensors"),
                      meta=json.loads((ROOT / "cases.json").read_text()))
    return _cache["pipe"], _cache["cases"], _cache["meta"]


def single(ours, ref, what: str) -> None:
    assert_close(ours, ref, 1e-5, 1e-5, 1e-6, what)  # section 3's limit for one forward pass


@pytest.mark.parametrize("case, stride, frames", [("video_load", -1, 8), ("video_load_stride", 3, 4),
                                                  ("video_load_fallback", 2, 8)])
def test_the_control_video_is_read_as_the_original_reads_it(case, stride, frames):
    """decord's resize while decoding (FFmpeg's bilinear scaling of the YUV frames), the stride and its fallback:
    exact."""
    meta = fixture()[2]["cases"][case]
    video = read_footage(ROOT / "control.mp4")
    assert np.array_equal(video.frames, fixture()[1]["video_load.native_uint8"].numpy())  # the decoder alone
    scaled = scaled_frames(video, 64, 64)
    indices = control_indices(len(scaled), frames, stride)
    assert indices == meta["indices"]
    if case != "video_load_fallback":
        assert torch.equal(video_tensor(scaled[indices])[0], fixture()[1][f"{case}.frames"])


def test_adapter_features_and_the_unet_with_them():
    pipe, cases, _ = fixture()
    with torch.inference_mode():
        features = pipe.control_features(cases["depth.output"])
        for level, feature in enumerate(features):
            single(feature, cases[f"adapter.features_{level}"], f"adapter feature {level}")
        x, t, context = cases["unet_adapter.x"], cases["unet_adapter.t"], cases["unet_adapter.context"]
        both = [torch.cat([f, f]) for f in features]
        single(pipe.unet(x, t, context, control=both), cases["unet_adapter.output"], "unet with features")
        single(pipe.unet(x, t, context), cases["unet_adapter.output_without_features"], "unet without features")
        other = [torch.cat([f, f]) for f in pipe.control_features(cases["depth_other.output"])]
        single(pipe.unet(x, t, context, control=other), cases["unet_adapter.output_other_video"], "other video")


@functools.cache  # one run a process for each case: test_ddim_with_the_adapter and the end-to-end test share it
def _ddim(prefix: str) -> torch.Tensor:
    pipe, cases, meta = fixture()
    case = meta["cases"][prefix]
    draws = iter([cases[k] for k in sorted(cases) if k.startswith(f"{prefix}.noise_step_")])
    with torch.inference_mode():
        uncond = pipe.encode_prompts([""]) if case["cfg_scale"] != 1.0 else None
        control = pipe.control_features(cases["depth.output"])
        cond = Conditioning(cases["ddim.text_emb"], uncond, torch.tensor([8]), control=control)
        denoise = Denoiser(pipe.unet, cond, case["cfg_scale"])
        unused = torch.zeros_like(cases["ddim.x_T"])  # the release's draw at eta 0, multiplied by 0
        return ddim_sample(denoise, cases["ddim.x_T"], pipe.schedule, case["ddim_steps_argument"], case["eta"],
                           noise=lambda: next(draws, unused))


@pytest.mark.parametrize("prefix", ["ddim_cfg", pytest.param("ddim_nocfg", marks=pytest.mark.slow),
                                    pytest.param("ddim_eta1", marks=pytest.mark.slow)])
def test_ddim_with_the_adapter(prefix):
    assert_close(_ddim(prefix), fixture()[1][f"{prefix}.output"], 1e-4, 1e-4, what=prefix)


def test_end_to_end_frames():
    """The adapter script's frames: clamp to [-1, 1], then (x + 1) / 2 * 255 truncated, which vcraft's frames_to_uint8
    matches byte for byte here."""
    from vcraft.pipeline.frames import frames_to_uint8

    pipe, cases, _ = fixture()
    with torch.inference_mode():
        video = pipe.autoencoder.decode(_ddim("ddim_cfg"))
    assert_close(video, cases["end_to_end.video"], 1e-4, 5e-4, what="video")
    diff = (frames_to_uint8(video)[0].int() - cases["end_to_end.frames_uint8"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 0.01


def test_the_pipeline_estimates_the_reference_depth_from_the_control_video():
    """What generation computes from `control_video` and `control_stride`: the reference's depth maps."""
    pipe, cases, _ = fixture()
    s = pipe.settings("a red fox running through snow", control_video=ROOT / "control.mp4", frames=8)
    assert (s.height, s.width, s.control_stride) == (64, 64, -1)
    other = pipe.settings("a red fox running through snow", control_video=ROOT / "control_other.mp4", frames=8)
    with torch.inference_mode():
        maps, other_maps = pipe.control_maps(s), pipe.control_maps(other)
    assert (maps - cases["depth.output"]).abs().max() <= 1e-4  # section 8: the per-frame normalisation divides
    assert (other_maps - cases["depth_other.output"]).abs().max() <= 1e-4


def test_the_full_size_preset_fits_the_official_layout():
    """vc0-256-depth built at full size takes the manifest's whole model (adapter and MiDaS keys included), and the
    release's separate adapter file, strictly."""
    from vcraft.loaders.loading import attach, build_models, place_checkpoint

    manifest = json.loads((reference_dir() / "manifests" / "vc0_depth.json").read_text())
    state = {k: torch.empty(v["shape"], device="meta") for k, v in manifest["keys"].items()}
    cfg = load_preset("vc0-256-depth").model
    models = build_models(cfg)
    place_checkpoint(models, cfg, state, "vc0_depth manifest")  # strict: raises on any difference
    assert sum(p.numel() for p in models.adapter.parameters()) == manifest["param_counts"]["adapter"]
    # The classifier head MiDaS never runs is left out.
    head = manifest["unused_at_inference"]["depth_model_classifier_head"]
    assert sum(p.numel() for p in models.depth_estimator.parameters()) == manifest["param_counts"]["depth_model"] - \
        sum(int(np.prod(manifest["keys"][k]["shape"])) for k in head)
    adapter = {k: torch.empty(v["shape"], device="meta")
               for k, v in manifest["separate_files"]["adapter.pth"]["keys"].items()}
    attach(build_models(cfg), cfg, "adapter", adapter, "adapter.pth")


# 4 frames, every third of the control video's 12: the depth model runs on each at 384x384.
COMMON = ["--config", str(ROOT / "config.yaml"), "--ckpt", str(BASE), "--adapter", str(ROOT / "adapter.pth"),
          "--frames", "4", "--steps", "3", "--eta", "0", "--seed", "3", "--format", "png", "-q"]


@pytest.mark.slow
def test_the_command_line_follows_a_control_video_records_it_and_makes_the_video_again(tmp_path):
    import shutil

    import imageio.v3 as iio

    from vcraft.app.cli import run

    control = tmp_path / "control.mp4"
    shutil.copy(ROOT / "control.mp4", control)
    prompt = "a red fox running through snow"
    assert run(["generate", prompt, *COMMON, "--control-video", str(control), "-o", str(tmp_path / "fox")]) == 0
    assert run(["generate", prompt, *COMMON, "--control-video", str(ROOT / "control_other.mp4"),
                "-o", str(tmp_path / "other")]) == 0
    recorded = json.loads((tmp_path / "fox.json").read_text())
    sha256 = json.loads((ROOT / "cases.json").read_text())["weights"]["sha256"]["control.mp4"]
    assert (recorded["control_video"], recorded["control_video_sha256"]) == (str(control.resolve()), sha256)
    assert recorded["parts"] == {"adapter": str((ROOT / "adapter.pth").resolve())}
    frames = {name: [iio.imread(f) for f in sorted((tmp_path / name).glob("*.png"))] for name in ("fox", "other")}
    assert len(frames["fox"]) == 4 and any((a != b).any() for a, b in zip(frames["fox"], frames["other"]))
    assert run(["generate", "--from", str(tmp_path / "fox.json"), "-o", str(tmp_path / "again"), "-q"]) == 0
    again = [iio.imread(f) for f in sorted((tmp_path / "again").glob("*.png"))]
    assert len(again) == 4 and all((a == b).all() for a, b in zip(again, frames["fox"]))
    control.write_bytes(control.read_bytes() + b"\0")  # no longer the video the first one followed
    assert run(["generate", "--from", str(tmp_path / "fox.json"), "-o", str(tmp_path / "changed"), "-q"]) == 2
    assert not (tmp_path / "changed").exists()


def _wrong_adapter(tmp_path):
    from safetensors.torch import save_file

    state = load_file(ROOT / "adapter.safetensors")
    state["conv_in.weight"] = torch.zeros(32, 16, 3, 3)  # an adapter for a model whose latents are 4x smaller
    save_file(state, str(tmp_path / "adapter.safetensors"))
    return ["--adapter", str(tmp_path / "adapter.safetensors"), "--control-video", str(ROOT / "control.mp4")]


@pytest.mark.parametrize("extra, message", [
    (lambda tmp: ["--control-video", str(tmp / "broken.mp4")], "cannot read video"),
    (lambda tmp: ["--control-video", str(ROOT / "control.mp4"), "--frames", "16"],
     "the video has 12 frames and the request needs 16"),
    pytest.param(_wrong_adapter, "does not fit the control adapter", marks=pytest.mark.slow),
    (lambda tmp: ["--control-video", str(ROOT / "control.mp4"), "--config",
                  str(reference_dir() / "tiny" / "vc0_base" / "config.yaml")],
     "--control-video needs a model with a control adapter"),
    (lambda tmp: ["--control-video", str(ROOT / "control.mp4"), "--control-stride", "0"],
     "--control-stride must be -1 or at least 1"),
])
def test_a_bad_control_input_is_one_error_line_and_nothing_is_written(tmp_path, capsys, extra, message):
    from vcraft.app.cli import run

    (tmp_path / "broken.mp4").write_bytes(b"\0\0\0 not a video")
    out = tmp_path / "out"
    code = run(["generate", "a fox", *COMMON, *extra(tmp_path), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists() and not (tmp_path / "out.json").exists()


def test_each_window_of_a_long_video_follows_its_own_stretch_of_the_control_video():
    """20 frames in windows of 16 with an overlap of 4: the second window's frames are the video's 12-27, whose
    control maps are frames 12-19, then the last one again for the frames made past the end. Depth maps given as
    grey frames (`control_depth`) are normalised per frame as estimated ones are."""
    pipe = fixture()[0]
    levels = (np.arange(24, dtype=np.uint8) * 10)[:, None, None, None]
    ramp = np.linspace(0, 1, 64, dtype=np.float32)[None, None, :, None]
    grey_frames = np.broadcast_to(np.round(levels * ramp), (24, 64, 64, 3)).astype(np.uint8)
    s = pipe.settings("a fox", control_depth=grey_frames, frames=20, steps=1, overlap=4)
    seen = []
    real = pipe.control_features
    pipe.control_features = lambda maps: seen.append(maps) or real(maps)
    try:
        assert len(pipe(s)) == 20
    finally:
        del pipe.control_features
    full = pipe.control_maps(s)
    assert full.shape == (1, 1, 20, 64, 64) and torch.equal(full[0, 0, 3].amin(), torch.tensor(-1.0))
    assert [m.shape[2] for m in seen] == [16, 16]
    assert torch.equal(seen[0], full[:, :, :16])
    assert torch.equal(seen[1], full[:, :, [*range(12, 20), *[19] * 8]])


def test_a_prompt_file_row_gives_its_own_control_video(tmp_path):
    import shutil

    from vcraft.app.batch import plan
    from vcraft.app.options import make_run_options
    from vcraft.app.prompts import gather_prompts

    shutil.copy(ROOT / "control.mp4", tmp_path / "a.mp4")
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text(json.dumps({"prompt": "a fox", "control_video": "a.mp4"}) + "\n"
                         + json.dumps({"prompt": "a fox"}) + "\n")
    rows = gather_prompts([], rows_file, None)
    videos = plan(rows, load_config(ROOT / "config.yaml"), {"frames": 8}, 0, 1, make_run_options(output=tmp_path))
    assert videos[0].settings.control_video.source == str((tmp_path / "a.mp4").resolve())
    assert videos[1].settings.control_video is None
    rows_file.write_text(json.dumps({"prompt": "a fox", "control_video": "missing.mp4"}) + "\n")
    with pytest.raises(Exception, match="rows.jsonl:1"):
        plan(gather_prompts([], rows_file, None), load_config(ROOT / "config.yaml"), {"frames": 8}, 0, 1,
             make_run_options(output=tmp_path))


def test_the_original_yaml_without_adapter_is_one_error_line_naming_the_option(tmp_path, capsys):
    from vcraft.app.cli import run

    code = run(["generate", "a fox", "--config", str(ROOT / "config.yaml"), "--ckpt", str(BASE), "--control-video",
                str(ROOT / "control.mp4"), "--frames", "8", "-o", str(tmp_path / "out.mp4"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: the control adapter of model 'config' is not on this machine; give it "
                                 "with --adapter PATH"], err
    assert not any(tmp_path.iterdir())
