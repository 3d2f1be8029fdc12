"""VideoCrafter's first release (April 2023), its base model `vc0-256`: every stage against the original's numbers
(../shared/reference section 8, `tiny/vc0_base`), the full-size layout, and the command line with the original
YAML."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from reference import assert_close, reference_dir
from safetensors.torch import load_file

from vcraft.config import load_config, load_preset
from vcraft.errors import VcraftError
from vcraft.loaders.checkpoints import load_state_dict
from vcraft.loaders.loading import build_models, identify_preset, load_models, place_checkpoint
from vcraft.sampling.conditioning import Conditioning
from vcraft.sampling.ddim import sample as ddim_sample
from vcraft.sampling.denoisers import Denoiser
from vcraft.sampling.schedule import q_sample

_cache: dict = {}


def fixture(container: str = "model.safetensors"):
    if container not in _cache:
        root = reference_dir() / "tiny" / "vc0_base"
        models = load_models(load_config(root / "config.yaml").model, load_state_dict(root / container), container)
        _cache[container] = (models, load_file(root / "cases.safetensors"),
                             json.loads((root / "cases.json").read_text()))
    return _cache[container]


def single(ours, ref, what: str) -> None:
    assert_close(ours, ref, 1e-5, 1e-5, 1e-6, what)  # section 3's limit for one forward pass


def test_the_original_yaml_reads_as_the_release_model():
    cfg = load_config(reference_dir() / "tiny" / "vc0_base" / "config.yaml")
    assert cfg.model.unet.family == "lvdm" and cfg.model.text_encoder.family == "clip"
    assert cfg.model.text_encoder.width == 16  # from clip_text_config.json beside the YAML
    assert (cfg.sampling.steps, cfg.sampling.guidance, cfg.sampling.eta) == (50, 15.0, 1.0)
    assert (cfg.sampling.height, cfg.sampling.width) == (64, 64)  # latent image_size 8 x 8


def test_text_tokens_and_output():
    models, cases, meta = fixture()
    tokens = models.text_encoder.tokenize(meta["cases"]["text"]["inputs"]["prompts"])
    assert torch.equal(tokens, cases["text.tokens"])  # padded with the end id; a long prompt keeps it last
    with torch.inference_mode():
        single(models.text_encoder(tokens), cases["text.output"], "text")


@pytest.mark.parametrize("case", ["unet", "unet_nonsquare"])
@pytest.mark.parametrize("container", ["model.ckpt", "model.safetensors"])
def test_unet(case, container):
    models, cases, _ = fixture(container)
    with torch.inference_mode():
        out = models.unet(cases[f"{case}.x"], cases[f"{case}.t"], cases[f"{case}.context"])
    single(out, cases[f"{case}.output"], case)


def test_vae_decode_and_q_sample():
    models, cases, _ = fixture()
    with torch.inference_mode():
        single(models.autoencoder.decode(cases["vae_decode.z"], chunk=1), cases["vae_decode.output"], "vae_decode")
    single(q_sample(models.schedule, cases["q_sample.x0"], cases["q_sample.t"], cases["q_sample.noise"]),
           cases["q_sample.output"], "q_sample")


@functools.cache  # one run a process for each case: test_ddim and test_end_to_end_frames read the same
def _ddim(prefix: str) -> torch.Tensor:
    models, cases, meta = fixture()
    case = meta["cases"][prefix]
    draws = iter([cases[k] for k in sorted(cases) if k.startswith(f"{prefix}.noise_step_")])
    with torch.inference_mode():
        uncond = models.text_encoder.encode([""]) if case["cfg_scale"] != 1.0 else None
        cond = Conditioning(cases["ddim.text_emb"], uncond, torch.tensor([8]))
        if uncond is not None:
            single(uncond, cases["ddim.uncond_emb"], "the empty prompt's embedding")
        denoise = Denoiser(models.unet, cond, case["cfg_scale"])
        # At eta 0 the release still draws a noise tensor every step, unused, which the fixture does not record.
        unused = torch.zeros_like(cases["ddim.x_T"])
        return ddim_sample(denoise, cases["ddim.x_T"], models.schedule, case["ddim_steps_argument"], case["eta"],
                           noise=lambda: next(draws, unused))


@pytest.mark.parametrize("prefix", ["ddim_cfg", "ddim_nocfg", "ddim_eta1"])
def test_ddim(prefix):
    assert_close(_ddim(prefix), fixture()[1][f"{prefix}.output"], 1e-4, 1e-4, what=prefix)


def test_end_to_end_frames():
    from vcraft.pipeline.frames import frames_to_uint8

    models, cases, _ = fixture()
    with torch.inference_mode():
        video = models.autoencoder.decode(_ddim("ddim_cfg"))
    assert_close(video, cases["end_to_end.video"], 1e-4, 5e-4, what="video")
    diff = (frames_to_uint8(video)[0].int() - cases["end_to_end.frames_uint8"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 0.01


def test_the_full_size_preset_fits_the_official_layout_and_is_recognised():
    manifest = json.loads((reference_dir() / "manifests" / "vc0_base.json").read_text())
    state = {k: torch.empty(v["shape"], device="meta") for k, v in manifest["keys"].items()}
    cfg = load_preset("vc0-256").model
    models = build_models(cfg)
    place_checkpoint(models, cfg, dict(state), "vc0_base manifest")  # strict: raises on any difference
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in models.items()}
    assert counts["unet"] == manifest["param_counts"]["unet"], counts
    assert identify_preset(state) == "vc0-256"
    # A checkpoint written with transformers 4.25 carries the text tower's position ids: ignored.
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.empty(1, 77, device="meta")
    place_checkpoint(build_models(cfg), cfg, state, "with position_ids")


@pytest.mark.slow
def test_the_command_line_makes_the_reference_video_from_the_original_yaml(tmp_path):
    import imageio.v3 as iio

    from vcraft.app.cli import run

    root = reference_dir() / "tiny" / "vc0_base"
    out = tmp_path / "fox.png"
    assert run(["generate", "a red fox running through snow", "--config", str(root / "config.yaml"), "--ckpt",
                str(root / "model.ckpt"), "--frames", "8", "--steps", "10", "--eta", "0", "--seed", "1",
                "-o", str(out), "--format", "png", "-q"]) == 0
    frames = sorted(out.glob("*.png"))
    assert len(frames) == 8 and iio.imread(frames[0]).shape == (64, 64, 3)
    assert json.loads((tmp_path / "fox.json").read_text())["guidance"] == 15.0


# VideoLoRA: the release's LoRA files merged into the weights.

def _pipe(**options):
    from vcraft import TextToVideo

    root = reference_dir() / "tiny" / "vc0_base"
    return TextToVideo.from_pretrained(str(root / "config.yaml"), root / "model.ckpt", device="cpu", **options)


@pytest.mark.parametrize("container", ["ckpt", "safetensors"])
def test_a_videolora_at_two_scales_then_removed(container):
    pipe, cases = _pipe(), fixture()[1]
    lora = reference_dir() / "tiny" / "vc0_base" / f"lora_unet.{container}"
    with torch.inference_mode():
        base = pipe.unet(cases["unet.x"], cases["unet.t"], cases["unet.context"])
        single(base, cases["unet.output"], "unet")
        for scale, case in ((1.0, "lora_unet_s1"), (0.5, "lora_unet_s05")):
            pipe.clear_loras().add_lora(lora, scale)
            out = pipe.unet(cases["unet.x"], cases["unet.t"], cases["unet.context"])
            single(out, cases[f"{case}.output"], f"LoRA at {scale}")
        pipe.clear_loras()
        assert torch.equal(pipe.unet(cases["unet.x"], cases["unet.t"], cases["unet.context"]), base)


def test_a_videolora_of_unet_and_text_skips_what_the_release_skips():
    """The text layers are merged; the Conv3d pair and the `.alpha` key change nothing, as in the release."""
    pipe, (_, cases, meta) = _pipe(), fixture()
    pipe.add_lora(reference_dir() / "tiny" / "vc0_base" / "lora_unet_text.ckpt")
    with torch.inference_mode():
        tokens = pipe.text_encoder.tokenize(meta["cases"]["text"]["inputs"]["prompts"])
        single(pipe.text_encoder(tokens), cases["lora_text.output"], "text with the LoRA")
        single(pipe.unet(cases["unet.x"], cases["unet.t"], cases["unet.context"]), cases["lora_text.unet_output"],
               "unet with the LoRA")


@pytest.mark.slow
def test_a_videolora_video_with_its_trigger_words():
    from vcraft.pipeline.frames import frames_to_uint8

    pipe, (_, cases, meta) = _pipe(), fixture()
    pipe.add_lora(reference_dir() / "tiny" / "vc0_base" / "lora_unet.ckpt")
    prompt = meta["cases"]["lora"]["prompt_with_trigger"]  # the prompt as written, trigger included
    with torch.inference_mode():
        assert torch.equal(pipe.text_encoder.tokenize([prompt]), cases["lora_ddim.tokens"])
        context = pipe.encode_prompts([prompt])
        single(context, cases["lora_ddim.text_emb"], "the triggered prompt")
        denoise = Denoiser(pipe.unet, Conditioning(context, pipe.encode_prompts([""]), torch.tensor([8])), 15.0)
        out = ddim_sample(denoise, cases["ddim.x_T"], pipe.schedule, 10, 0.0)
        assert_close(out, cases["lora_ddim_cfg.output"], 1e-4, 1e-4, what="LoRA ddim")
        frames = frames_to_uint8(pipe.autoencoder.decode(out))[0]
    diff = (frames.int() - cases["lora_end_to_end.frames_uint8"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 0.01


@pytest.mark.parametrize("make, message", [
    (lambda tmp: torch.save({"model.diffusion_model.nowhere.lora_up.weight": torch.ones(2, 1),
                             "model.diffusion_model.nowhere.lora_down.weight": torch.ones(1, 2)}, tmp),
     "names 'model.diffusion_model.nowhere', which the model does not have"),
    (lambda tmp: torch.save({"model.diffusion_model.out.2.lora_up.weight": torch.ones(2, 1),
                             "model.diffusion_model.out.2.lora_down.weight": torch.ones(1, 2)}, tmp), None),
    (lambda tmp: torch.save({"x": torch.ones(1)}, tmp), "is not a LoRA file"),
    (lambda tmp: tmp.write_bytes(b"PK\x03\x04 truncated"), "LoRA: cannot read"),
])
def test_a_bad_lora_is_one_error_and_changes_nothing(tmp_path, make, message):
    pipe, cases = _pipe(), fixture()[1]
    path = tmp_path / "bad.ckpt"
    make(path)
    with torch.inference_mode():
        before = pipe.unet(cases["unet.x"], cases["unet.t"], cases["unet.context"])
        if message is None:  # a Conv3d layer (the UNet's output conv): skipped, as the release skips it
            pipe.add_lora(path)
        else:
            with pytest.raises(VcraftError, match=message):
                pipe.add_lora(path)
        assert torch.equal(pipe.unet(cases["unet.x"], cases["unet.t"], cases["unet.context"]), before)


def test_a_lora_whose_shapes_do_not_fit_is_refused_before_any_weight_changes(tmp_path):
    pipe, cases = _pipe(), fixture()[1]
    good = torch.load(reference_dir() / "tiny" / "vc0_base" / "lora_unet.ckpt", weights_only=True)
    last = sorted(good)[-1].removesuffix(".lora_up.weight").removesuffix(".lora_down.weight")
    good[f"{last}.lora_up.weight"] = torch.ones(3, 4)  # made for a model of another width
    torch.save(good, tmp_path / "other.ckpt")
    with torch.inference_mode():
        before = pipe.unet(cases["unet.x"], cases["unet.t"], cases["unet.context"])
        with pytest.raises(VcraftError, match="does not fit this model: .* in the file, the model's layer is"):
            pipe.add_lora(tmp_path / "other.ckpt")
        assert torch.equal(pipe.unet(cases["unet.x"], cases["unet.t"], cases["unet.context"]), before)


@pytest.mark.slow
def test_the_command_line_merges_loras_records_them_and_makes_the_video_again(tmp_path):
    import shutil

    import imageio.v3 as iio

    from vcraft.app.cli import run

    root = reference_dir() / "tiny" / "vc0_base"
    lora = tmp_path / "style.ckpt"
    shutil.copy(root / "lora_unet.ckpt", lora)
    common = ["--config", str(root / "config.yaml"), "--ckpt", str(root / "model.ckpt"), "--frames", "8",
              "--steps", "4", "--eta", "0", "--seed", "3", "--format", "png", "-q"]
    prompt = "a red fox running through snow, Loving Vincent style"
    assert run(["generate", prompt, *common, "-o", str(tmp_path / "plain")]) == 0
    assert run(["generate", prompt, *common, "--lora", f"{lora}:0.5", "-o", str(tmp_path / "styled")]) == 0
    recorded = json.loads((tmp_path / "styled.json").read_text())["loras"]
    assert recorded == [{"path": str(lora.resolve()), "sha256": recorded[0]["sha256"], "scale": 0.5}]
    assert json.loads((tmp_path / "plain.json").read_text())["loras"] == []
    frames = {name: [iio.imread(f) for f in sorted((tmp_path / name).glob("*.png"))] for name in ("plain", "styled")}
    assert any((a != b).any() for a, b in zip(frames["plain"], frames["styled"])), "the LoRA changed nothing"
    assert run(["generate", "--from", str(tmp_path / "styled.json"), "-o", str(tmp_path / "again"), "-q"]) == 0
    again = [iio.imread(f) for f in sorted((tmp_path / "again").glob("*.png"))]
    assert all((a == b).all() for a, b in zip(again, frames["styled"])) and len(again) == 8
    lora.write_bytes(lora.read_bytes() + b"\0")  # the file is no longer the one the video was made with
    assert run(["generate", "--from", str(tmp_path / "styled.json"), "-o", str(tmp_path / "changed"), "-q"]) == 2
    assert not (tmp_path / "changed").exists()


def test_a_lora_made_for_another_model_is_one_error_line_and_nothing_is_written(tmp_path, capsys):
    from vcraft.app.cli import run

    vc2 = reference_dir() / "tiny" / "vc2_512"
    lora = reference_dir() / "tiny" / "vc0_base" / "lora_unet.ckpt"
    code = run(["generate", "a fox", "--config", str(vc2 / "config.yaml"), "--ckpt", str(vc2 / "model.safetensors"),
                "--lora", str(lora), "--frames", "8", "--height", "64", "--width", "64", "--steps", "2",
                "-o", str(tmp_path / "out.mp4"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not fit this model" in err[0], err
    assert not any(tmp_path.iterdir())


def test_a_lora_merged_for_good_cannot_be_removed():
    pipe = _pipe().add_lora(reference_dir() / "tiny" / "vc0_base" / "lora_unet.ckpt", removable=False)
    with pytest.raises(VcraftError, match="cannot be removed"):
        pipe.clear_loras()


@pytest.mark.slow
def test_the_same_lora_in_the_kohya_and_peft_layouts_gives_the_same_model(tmp_path):
    """The release's text-and-UNet LoRA without the pairs it skips, written as kohya (alpha 2 at rank 4: a factor of
    0.5) and as PEFT (lora_alpha 2, r 4 in adapter_config.json, or in diffusers' metadata), merges as the VideoLoRA
    file at scale 0.5; `from_pretrained(lora=...)` merges the same."""
    from safetensors.torch import save_file

    _, cases, meta = fixture()
    root = reference_dir() / "tiny" / "vc0_base"
    state = torch.load(root / "lora_unet_text.ckpt", weights_only=True)
    names = {k.removesuffix(".lora_up.weight") for k in state if k.endswith(".lora_up.weight")}
    names.discard("model.diffusion_model.input_blocks.1.1.proj_in")  # a Conv3d: the release skips it
    kohya, peft = {}, {}
    for name in names:
        up, down = state[f"{name}.lora_up.weight"], state[f"{name}.lora_down.weight"]
        short = name.removeprefix("model.diffusion_model.").removeprefix("cond_stage_model.transformer.")
        start = "lora_unet_" if name.startswith("model.") else "lora_te_"
        kohya.update({f"{start}{short.replace('.', '_')}.lora_up.weight": up,
                      f"{start}{short.replace('.', '_')}.lora_down.weight": down,
                      f"{start}{short.replace('.', '_')}.alpha": torch.tensor(2.0)})
        peft.update({f"base_model.model.{name}.lora_B.weight": up, f"base_model.model.{name}.lora_A.weight": down})
    (tmp_path / "peft").mkdir()
    save_file(kohya, str(tmp_path / "kohya.safetensors"), metadata={"trigger": ", tiny style"})
    save_file(peft, str(tmp_path / "peft" / "adapter_model.safetensors"))
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2}))
    save_file(peft, str(tmp_path / "diffusers.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 2})})
    outputs = []
    for lora in ((root / "lora_unet_text.ckpt", 0.5), tmp_path / "kohya.safetensors",
                 (tmp_path / "peft" / "adapter_model.safetensors", 1.0), tmp_path / "diffusers.safetensors"):
        pipe = _pipe(lora=[lora])
        with torch.inference_mode():
            tokens = pipe.text_encoder.tokenize(meta["cases"]["text"]["inputs"]["prompts"])
            unet = pipe.unet(cases["unet.x"], cases["unet.t"], cases["unet.context"])
            outputs.append((pipe.text_encoder(tokens), unet))
    for text, unet in outputs[1:]:
        assert torch.equal(text, outputs[0][0]) and torch.equal(unet, outputs[0][1])
    from vcraft.loaders.lora import read_lora

    assert read_lora(tmp_path / "kohya.safetensors").trigger == ", tiny style"  # from the file's metadata
    assert read_lora(root / "lora_unet.ckpt").trigger == ""
    assert not torch.equal(outputs[0][1], cases["unet.output"])  # the LoRA did change the model


def test_the_release_s_ddim_draws_noise_at_every_step_even_at_eta_0():
    """As its sampler's `noise_like` at every step: a long video's later windows then start from the noise that
    follows those draws in the video's generator."""
    models = fixture()[0]
    assert models.schedule.noise_every_step
    draws = []
    cond = Conditioning(torch.zeros(1, 77, 16), None, torch.tensor([8]))
    with torch.inference_mode():
        ddim_sample(Denoiser(models.unet, cond, 1.0), torch.zeros(1, 4, 2, 8, 8), models.schedule, 5, 0.0,
                    noise=lambda: draws.append(1) or torch.zeros(1, 4, 2, 8, 8))
    assert len(draws) == 5
    assert not load_preset("vc2-512").model.schedule.noise_every_step
