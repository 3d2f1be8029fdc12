"""T2V-Turbo against its own code's numbers on the tiny VideoCrafter2 weights (reference README, section 10): the v1
LoRA file mapped by order and merged, the UNet with its guidance (and motion) embedding, the consistency sampler at 4
and 8 steps step by step, motion guidance, and the frames through the command line; one UNet pass a step; the
full-size layouts; the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference import assert_close, reference_dir, rel_l2
from safetensors.torch import load_file, save_file
from test_cli import one_error_line, read_pngs, vcraft

from vcraft.config import load_config, load_preset
from vcraft.loaders.checkpoints import load_state_dict
from vcraft.loaders.loading import attach, build_models, load_models, place_checkpoint
from vcraft.loaders.lora import Merged, ordered_layers, read_lora
from vcraft.sampling import consistency
from vcraft.sampling.conditioning import Conditioning
from vcraft.sampling.denoisers import Denoiser

V1 = ["model.unet.guidance_embedding=256"]
V2 = [*V1, "model.unet.motion_embedding=256"]
_cache: dict = {}


def root():
    return reference_dir() / "tiny" / "vc2_512_turbo"


def cases():
    if "cases" not in _cache:
        _cache["cases"] = (load_file(root() / "cases.safetensors"), json.loads((root() / "cases.json").read_text()))
    return _cache["cases"]


def model(version: str, lora: bool = True):
    """The tiny T2V-Turbo as the app builds it: v1 = VideoCrafter2 + the fixture's guidance projection (+ the LoRA
    merged); v2 = VideoCrafter2 with the v2 UNet file in place of its UNet."""
    key = (version, lora)
    if key not in _cache:
        cfg = load_config(root() / "config.yaml", V1 if version == "v1" else V2)
        state = load_state_dict(root().parent / "vc2_512" / "model.safetensors")
        parts = {} if version == "v1" else {"unet": (load_state_dict(root() / "unet_mg.pt"), "unet_mg.pt")}
        models = load_models(cfg.model, state, "vc2_512", parts=parts)
        if version == "v1":
            attach(models, cfg.model, "unet", {**models.unet.state_dict(),
                                               **load_file(root() / "v1_time_cond_proj.safetensors")}, "fixture")
            if lora:
                Merged(models, cfg.model).add(read_lora(root() / "unet_lora.pt"))
        _cache[key] = (cfg, models)
    return _cache[key]


def test_the_lora_list_maps_to_the_unets_layers_in_order():
    cfg, models = model("v1", lora=False)
    names = [name for name, _ in ordered_layers(models.unet)]
    lora = read_lora(root() / "unet_lora.pt")
    named = load_file(root() / "unet_lora.safetensors")
    assert lora.format == "ordered" and len(lora.pairs) == len(names) == 370
    for i, name in enumerate(names):
        up, down, factor = lora.pairs[str(i)]
        assert torch.equal(up, named[f"{name}.lora_up.weight"]) and torch.equal(down, named[f"{name}.lora_down.weight"])
        assert factor == 1.0
    assert names[4] == "time_cond_proj" and "init_attn.0.transformer_blocks.0.attn1.to_q" in names


def test_the_merge_is_the_originals():
    cases_, meta = cases()
    merged = model("v1")[1].unet
    modules = sorted({k.removeprefix("v1_merge.").rsplit(".", 1)[0] for k in cases_ if k.startswith("v1_merge.")})
    assert len(modules) == 5
    for name in modules:
        ours = merged.get_submodule(name).weight
        assert_close(ours, cases_[f"v1_merge.{name}.merged"], 1e-5, 1e-5, what=name)
        assert rel_l2(cases_[f"v1_merge.{name}.base"], cases_[f"v1_merge.{name}.merged"]) > 0.05


def _unet(models, scale, motion=None):
    c = cases()[0]
    context, x = c["text.emb"], c["inputs.unet_x"]
    with torch.inference_mode():
        return models.unet(x, torch.tensor([999, 1]), context, torch.tensor([16, 16]),
                           guidance_scale=torch.tensor(scale), motion_scale=None if motion is None else
                           torch.tensor(motion))


@pytest.mark.parametrize("version,output,scale,motion", [
    ("v1", "output", [7.5, 7.5], None), ("v1", "output_w2", [2.0, 14.0], None),
    ("v2", "output", [7.5, 7.5], None), ("v2", "output_w2", [2.0, 14.0], None),
    ("v2", "output_motion", [7.5, 7.5], [0.05, 0.05]), ("v2", "output_motion0", [7.5, 7.5], [0.0, 0.0])])
def test_the_unet_with_its_guidance_embedding(version, output, scale, motion):
    ours = _unet(model(version)[1], scale, motion)
    assert_close(ours, cases()[0][f"{version}_unet.{output}"], 1e-5, 1e-5, what=f"{version} {output}")


def test_the_unet_without_the_lora_and_without_the_scale():
    c = cases()[0]
    assert_close(_unet(model("v1", lora=False)[1], [7.5, 7.5]), c["v1_unet.output_nolora"], 1e-5, 1e-5)
    with torch.inference_mode():  # no scale: the plain VideoCrafter2 path
        plain = model("v1", lora=False)[1].unet(c["inputs.unet_x"], torch.tensor([999, 1]), c["text.emb"],
                                                torch.tensor([16, 16]))
    assert_close(plain, c["v1_unet.output_plain_vc2"], 1e-5, 1e-5)


def test_the_guidance_projection_vcraft_uses_when_no_file_has_it():
    """v1's base guidance projection is in no released file: a VideoCrafter2 checkpoint gets zeros, which moves the
    tiny UNet's output by about as much as the original's own launch-to-launch draws do (docs/models.md)."""
    cfg = load_config(root() / "config.yaml", V1)
    models = load_models(cfg.model, load_state_dict(root().parent / "vc2_512" / "model.safetensors"), "vc2_512")
    assert not models.unet.time_cond_proj.weight.any()
    Merged(models, cfg.model).add(read_lora(root() / "unet_lora.pt"))
    change = rel_l2(_unet(models, [7.5, 7.5]), cases()[0]["v1_unet.output"])
    assert 0.005 < change < 0.05


CASES = ["v1_pipe_4steps", "v1_pipe_8steps", "v2_pipe_4steps", "v2_pipe_8steps", "v2_pipe_8steps_mg",
         "v2_pipe_8steps_mg0"]


def _conditioning(case: dict) -> Conditioning:
    c = cases()[0]
    motion = case["motion_gs"] if case["use_motion_cond"] else None
    return Conditioning(c["text.emb"][:1], None, torch.tensor([case["fps"]]), guidance_scale=7.5,
                        motion_scale=None if motion is None else float(motion), motion_min_t=700)


@pytest.mark.parametrize("name", CASES)
def test_the_consistency_sampler_step_by_step(name):
    c, meta = cases()
    case = meta["cases"][name]
    cfg, models = model(case["version"])
    assert consistency.consistency_timesteps(case["steps"]) == case["timesteps"]
    for step in case["per_step"]:
        c_skip, c_out = consistency.boundary(step["t"])
        assert c_skip == pytest.approx(step["c_skip"], rel=1e-6) and c_out == pytest.approx(step["c_out"], rel=1e-6)
    draws = iter(c[f"inputs.noise_step_{k:02d}"] for k in range(8))
    outputs, steps = [], []
    denoiser = Denoiser(models.unet, _conditioning(case), 7.5)
    with torch.inference_mode():
        out = consistency.sample(lambda x, t: outputs.append(denoiser(x, t)) or outputs[-1], c["inputs.x_T"],
                                 models.schedule, case["steps"], noise=lambda: next(draws), callback=steps.append)
    for k, step in enumerate(steps):
        for field, ours in (("model_output", outputs[k]), ("denoised", step.denoised), ("latents", step.x)):
            assert_close(ours, c[f"{name}.step_{k:02d}.{field}"], 1e-4, 1e-4, what=f"{name} step {k} {field}")
    assert_close(out, c[f"{name}.output"], 1e-4, 1e-4, what=name)
    assert len(list(draws)) == 8 - case["steps"]  # one draw a step, the last one's included


def test_the_cases_differ_where_they_should():
    c = cases()[0]
    assert rel_l2(c["v1_pipe_4steps.output"], c["v1_pipe_8steps.output"]) > 0.2
    assert rel_l2(c["v2_pipe_8steps_mg.output"], c["v2_pipe_8steps.output"]) > 0.01


@pytest.fixture
def fixture_noise(monkeypatch):
    """The fixture's x_T and per-step noises as the video's draws, in vcraft's order (x_T, then one a step)."""
    c = cases()[0]
    draws = iter([c["inputs.x_T"]] + [c[f"inputs.noise_step_{k:02d}"] for k in range(8)])
    monkeypatch.setattr("vcraft.pipeline.api.draw_noise", lambda schedule, generator, shape: next(draws).clone())
    return draws


def _frames_match(frames, ref) -> None:
    diff = (torch.from_numpy(frames).int() - ref.int()).abs()
    assert frames.shape == tuple(ref.shape) and int(diff.max()) <= 1, f"max difference {int(diff.max())}"
    assert float((diff > 0).float().mean()) <= 0.001


def _command(version: str, tmp_path) -> list:
    config = ["--config", root() / "config.yaml", *(a for o in (V1 if version == "v1" else V2) for a in ("--set", o))]
    if version == "v2":
        return [*config, "--ckpt", root().parent / "vc2_512" / "model.safetensors", "--unet", root() / "unet_mg.pt"]
    state = load_file(root().parent / "vc2_512" / "model.safetensors")
    state["model.diffusion_model.time_cond_proj.weight"] = load_file(
        root() / "v1_time_cond_proj.safetensors")["time_cond_proj.weight"]
    save_file(state, tmp_path / "v1.safetensors")  # the base the fixture's app drew, in the checkpoint
    return [*config, "--ckpt", tmp_path / "v1.safetensors", "--lora", root() / "unet_lora.pt"]


@pytest.mark.parametrize("name,motion", [("v1_pipe_4steps", None), ("v2_pipe_8steps_mg", "0.05")])
def test_the_command_makes_the_originals_frames(tmp_path, fixture_noise, name, motion):
    case = cases()[1]["cases"][name]
    out = vcraft("generate", "a red fox running through snow", *_command(case["version"], tmp_path), "--frames", "8",
                 "--height", "64", "--width", "128", "--steps", str(case["steps"]), "--fps", str(case["fps"]),
                 "--guidance", "7.5", *(["--motion-guidance", motion] if motion else []), "--device", "cpu",
                 "--dtype", "fp32", "--format", "png", "-o", tmp_path / "video", "-q")
    assert out.returncode == 0, out.stderr
    _frames_match(read_pngs(tmp_path / "video"), cases()[0][f"{name}.frames_uint8"])
    assert len(list(fixture_noise)) == 8 - case["steps"]
    made = json.loads((tmp_path / "video.json").read_text())
    assert made["sampler"] == "consistency" and made["motion_guidance"] == (float(motion) if motion else None)


def test_the_full_size_layouts_fit_the_presets():
    """The v2 UNet file's keys and shapes, and the v1 LoRA's list (by order and shape), fit vc2-turbo-v2 and vc2-turbo;
    (scripts/bench_turbo.py loads them with random weights and runs them)."""
    manifests = reference_dir() / "manifests"
    v2 = json.loads((manifests / "vc2_turbo_v2_unet.json").read_text())
    cfg = load_preset("vc2-turbo-v2").model
    models = build_models(cfg)
    vc2 = json.loads((manifests / "vc2_512.json").read_text())
    base = {k: torch.empty(v["shape"], device="meta") for k, v in vc2["keys"].items()}
    unet = {k: torch.empty(v["shape"], device="meta") for k, v in v2["keys"].items()}
    attach(models, cfg, "unet", unet, "unet_mg.pt manifest")  # strict
    assert sum(p.numel() for p in models.unet.parameters()) == 1_413_653_060
    place_checkpoint(build_models(load_preset("vc2-turbo").model), load_preset("vc2-turbo").model, base, "vc2")
    v1 = json.loads((manifests / "vc2_turbo_v1_lora.json").read_text())["modules"]
    layers = ordered_layers(build_models(load_preset("vc2-turbo").model).unet)
    assert [name for name, _ in layers] == [m["module"] for m in v1]
    assert [list(layer.weight.shape) for _, layer in layers] == [m["base_weight"] for m in v1]


@pytest.mark.parametrize("args,message", [
    (["--sampler", "ddim"], "sampled with --sampler consistency"),
    (["--negative", "blurry"], "takes no negative prompt"),
    (["--steps", "201"], "between 1 and 200 with the consistency sampler"),
    (["--motion-guidance", "0.05"], "needs a model with motion guidance"),
])
def test_settings_a_few_step_model_cannot_take(tmp_path, args, message):
    out = vcraft("generate", "a fox", "--config", root() / "config.yaml", "--set", V1[0], "--ckpt",
                 root().parent / "vc2_512" / "model.safetensors", *args, "-o", tmp_path / "v.mp4")
    assert out.returncode != 0 and message in one_error_line(out)
    assert not list(tmp_path.iterdir())


def test_the_consistency_sampler_needs_a_few_step_model(tmp_path):
    out = vcraft("generate", "a fox", "--config", root() / "config.yaml", "--ckpt",
                 root().parent / "vc2_512" / "model.safetensors", "--sampler", "consistency", "-o", tmp_path / "v.mp4")
    assert "--sampler consistency is for few-step models" in one_error_line(out)


def test_a_lora_list_for_another_unet_is_refused(tmp_path):
    tensors = torch.load(root() / "unet_lora.pt", weights_only=True)
    torch.save(tensors[:-2], tmp_path / "short.pt")
    tensors[1] = tensors[1][:, :5]
    torch.save(tensors, tmp_path / "wrong.pt")
    common = ["--config", root() / "config.yaml", "--set", V1[0], "--ckpt",
              root().parent / "vc2_512" / "model.safetensors", "--steps", "1", "-q", "-o", tmp_path / "v.mp4"]
    short = one_error_line(vcraft("generate", "a fox", *common, "--lora", tmp_path / "short.pt"))
    assert "holds 369 unnamed pairs" in short and "has 370 such layers" in short
    wrong = one_error_line(vcraft("generate", "a fox", *common, "--lora", tmp_path / "wrong.pt"))
    assert "'time_embed.0'" in wrong
    assert not (tmp_path / "v.mp4").exists()


def _passes(pipe, **settings) -> tuple[list, list]:
    """The video of `settings`, and each UNet pass's (batch, frames, whether it got an early context)."""
    passes = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args, kwargs: passes.append(
        (kwargs["x"].shape[0], kwargs["x"].shape[2], "early_context" in kwargs)), with_kwargs=True)
    try:
        return pipe("a red fox running through snow", **{"height": 64, "width": 64, "steps": 2, "guidance": 7.5,
                                                         "seed": 5, **settings}), passes
    finally:
        hook.remove()


def test_one_unet_pass_a_step_in_clips_and_long_videos():
    """A clip: one UNet pass a step, no unconditional one. replace: window by window, each a run of its own (its given
    frames put back at every step's level); the first window is the clip alone. freenoise: all frames in one run of a
    pass a step; a prompt schedule's motion injection reaches the UNet at FreeNoise's steps, though no unconditional
    pass is made."""
    from vcraft.pipeline.api import TextToVideo

    cfg, models = model("v1")
    pipe = TextToVideo(cfg, models, torch.device("cpu"), torch.float32)
    for steps in (4, 8):
        assert _passes(pipe, frames=8, steps=steps)[1] == [(1, 8, False)] * steps
    clip, passes = _passes(pipe, frames=16)
    assert passes == [(1, 16, False)] * 2
    longer, passes = _passes(pipe, frames=24, extend="replace", overlap=4)
    assert longer.shape[0] == 24 and passes == [(1, 16, False)] * 4  # two windows of 2 steps
    assert np.array_equal(longer[:16], clip)
    whole, passes = _passes(pipe, frames=24, extend="freenoise")
    assert whole.shape[0] == 24 and passes == [(1, 24, False)] * 2
    scheduled, passes = _passes(pipe, frames=24, extend="freenoise", prompts=["a red fox running through snow",
                                                                              "a red fox sleeping in the snow"])
    assert passes == [(1, 24, True)] * 2  # injected at FreeNoise's first five steps
    assert not (scheduled == whole).all()


def test_a_prompt_file_row_and_a_sidecar_make_the_same_v2_video(tmp_path):
    v2 = [a for o in V2 for a in ("--set", o)]
    model_args = ["--config", root() / "config.yaml", *v2, "--ckpt", root().parent / "vc2_512" / "model.safetensors",
                  "--unet", root() / "unet_mg.pt", "--frames", "8", "--height", "64", "--width", "64", "--steps", "2",
                  "-q"]
    first = vcraft("generate", "a red fox", *model_args, "--motion-guidance", "0.05", "--seed", "3",
                   "-o", tmp_path / "a.mp4")
    assert first.returncode == 0, first.stderr
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": "a red fox", "seed": 3, "motion_guidance": 0.05,
                                                     "name": "row"}) + "\n")
    again = [vcraft("generate", "--from", tmp_path / "a.json", "-o", tmp_path / "b.mp4", "-q"),
             vcraft("generate", "-f", tmp_path / "rows.jsonl", *model_args, "-o", tmp_path)]
    assert [r.returncode for r in again] == [0, 0], [r.stderr for r in again]
    video = (tmp_path / "a.mp4").read_bytes()
    assert (tmp_path / "b.mp4").read_bytes() == video and (tmp_path / "row.mp4").read_bytes() == video
    assert json.loads((tmp_path / "row.json").read_text())["motion_guidance"] == 0.05


def test_a_lora_goes_on_top_and_comes_off_leaving_the_turbo_weights(tmp_path):
    """A LoRA of the user's (here PEFT's layout, from the UNet) merged over v1's merged one changes the video; removing
    it gives back the Turbo video bit for bit: the model's own LoRA stays."""
    from vcraft.pipeline.api import TextToVideo

    cfg, models = model("v1")
    pipe = TextToVideo(cfg, models, torch.device("cpu"), torch.float32)
    named = load_file(root() / "unet_lora.safetensors")
    peft = {k.replace(".lora_up.weight", ".lora_B.weight").replace(".lora_down.weight", ".lora_A.weight"): v
            for k, v in named.items() if ".attn2." in k}
    save_file(peft, tmp_path / "style.safetensors")
    settings = {"frames": 8, "height": 64, "width": 64, "steps": 2, "seed": 1}
    turbo = pipe("a red fox", **settings)
    styled = pipe.add_lora(tmp_path / "style.safetensors", 0.5)("a red fox", **settings)
    again = pipe.clear_loras()("a red fox", **settings)
    assert not np.array_equal(styled, turbo) and np.array_equal(again, turbo)
