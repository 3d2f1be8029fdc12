"""FreeNoise against its own code's numbers on the tiny VideoCrafter2 weights (reference README, section 9): noise
rescheduling, the UNet with window fusion, its DDIM at eta 0 and 1 step by step, the two-prompt run (and, through
the command line, the frames: tests/test_schedules.py)."""

from __future__ import annotations

import json

import pytest
import torch
from reference import assert_close, reference_dir, rel_l2
from safetensors.torch import load_file

from vcraft.config import load_config
from vcraft.loaders.checkpoints import load_state_dict
from vcraft.loaders.loading import load_models
from vcraft.sampling.conditioning import Conditioning
from vcraft.sampling.ddim import ddim_timesteps
from vcraft.sampling.ddim import sample as ddim_sample
from vcraft.sampling.denoisers import Denoiser
from vcraft.sampling.freenoise import even_starts, frame_contexts, fused_windows, injection_steps, reschedule, windows

_cache: dict = {}
SPANS = windows(32, 16, 4)


def fixture():
    if not _cache:
        root = reference_dir() / "tiny" / "vc2_512_freenoise"
        cfg = load_config(root / "config.yaml")
        state = load_state_dict(root.parent / "vc2_512" / "model.safetensors")
        _cache["all"] = (load_models(cfg.model, state, "vc2_512", encoder=False), load_file(root / "cases.safetensors"),
                         json.loads((root / "cases.json").read_text()))
    return _cache["all"]


def test_windows_are_freenoises_views():
    assert SPANS == [(0, 16), (4, 20), (8, 24), (12, 28), (16, 32)]
    assert len(windows(40, 16, 4)) == 7


@pytest.mark.parametrize("frames", [32, 40])
def test_noise_rescheduling_is_exact(frames):
    _, cases, meta = fixture()
    name = f"noise_rescheduling.T{frames}_s4"
    base = cases[f"{name}.base"][None]
    out = reschedule(base, 16, 4, meta["script_seed"])[0]
    assert torch.equal(out, cases[f"{name}.output"])
    assert rel_l2(out, base[0]) > 0.9  # not the independent draw


def test_unet_with_window_fusion():
    models, cases, _ = fixture()
    args = [cases[f"unet_window_fusion.{k}"] for k in ("x", "t", "context", "fps")]
    with torch.inference_mode():
        with fused_windows(models.unet, SPANS):
            fused = models.unet(*args)
        plain = models.unet(*args)  # the windows are gone after the block
    assert_close(fused, cases["unet_window_fusion.output"], 1e-5, 1e-5, what="fused UNet")
    assert_close(plain, cases["unet_window_fusion.output_plain"], 1e-5, 1e-5, what="plain UNet")


def _run(prefix: str, eta: float, cond: Conditioning):
    models, cases, _ = fixture()
    recorded = {}
    draws = iter([cases[k] for k in sorted(cases) if k.startswith(f"{prefix}.noise_step_")])
    with torch.inference_mode(), fused_windows(models.unet, SPANS):
        out = ddim_sample(Denoiser(models.unet, cond, 12.0), cases["ddim.x_T"], models.schedule, 10, eta,
                          noise=lambda: next(draws), callback=lambda step: recorded.update({step.index - 1: step}))
    return out, recorded


def _single_prompt() -> Conditioning:
    models, cases, _ = fixture()
    with torch.inference_mode():
        return Conditioning(cases["ddim.text_emb"], models.text_encoder.encode([""]), torch.tensor([16]))


@pytest.mark.parametrize("prefix,eta", [("ddim_cfg", 0.0), ("ddim_eta1", 1.0)])
def test_freenoise_ddim_step_by_step(prefix, eta):
    _, cases, _ = fixture()
    out, recorded = _run(prefix, eta, _single_prompt())
    assert len(recorded) == 10
    for i, step in recorded.items():
        assert_close(step.x, cases[f"{prefix}.step_{i:02d}.x_prev"], 1e-4, 1e-4, what=f"step {i} x_prev")
        if prefix == "ddim_cfg":
            assert_close(step.denoised, cases[f"{prefix}.step_{i:02d}.pred_x0"], 1e-4, 1e-4, what=f"step {i} x0")
    assert_close(out, cases[f"{prefix}.output"], 1e-4, 1e-4, what=prefix)


def test_two_prompts_with_motion_injection():
    models, cases, meta = fixture()
    emb = cases["multi_prompt.text_emb"]
    schedule = frame_contexts(emb, even_starts(2, 32), 32)
    ref = cases["multi_prompt.cond_all"]
    copied = [*range(12), *range(20, 32)]
    assert torch.equal(schedule[0, copied], ref[0, copied])
    assert torch.equal(schedule[0, 12], emb[0])  # the ramp starts at the first prompt exactly
    assert_close(schedule[0, 12:20], ref[0, 12:20], 1e-6, 1e-6, what="ramp")
    timesteps = ddim_timesteps(10)[::-1]
    injected = injection_steps(timesteps)
    conditional = [c for c in meta["cases"]["multi_prompt"]["unet_calls_in_order"] if len(c["context_shape"]) == 4]
    assert [(t, t in injected) for t in timesteps] == [(c["t"], c["use_injection"]) for c in conditional]
    with torch.inference_mode():
        cond = Conditioning(schedule, models.text_encoder.encode([""]), torch.tensor([16]),
                            early=emb[1:][:, None].expand(-1, 32, -1, -1), early_at=injected)
    out, recorded = _run("multi_prompt", 0.0, cond)
    for i, step in recorded.items():
        assert_close(step.x, cases[f"multi_prompt.step_{i:02d}.x_prev"], 1e-4, 1e-4, what=f"step {i}")
    assert_close(out, cases["multi_prompt.output"], 1e-4, 1e-4, what="multi_prompt")
