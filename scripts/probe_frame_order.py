"""Does the shapes model tell its frames apart? Two measurements at chosen timesteps:

1. Same noise in every frame: how far each frame's output is from the middle frame's. A UNet that knows
   nothing of frame order gives identical frames back.
2. From pure noise, the mean (over seeds) of the model's clean-clip estimate for "moving left / right / up /
   down" prompts, decoded: how far the object's centre moves along the prompt's axis from the first four
   frames to the last four. It follows the caption only if the model can make frames differ by their order.

    python scripts/probe_frame_order.py --config runs/shapes6/config.yaml --ckpt runs/shapes6/model.safetensors
    python scripts/probe_frame_order.py --run runs/shapes7 --levels 961 700
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from eval_shapes import load  # the same choice of model as the evaluation
from vcraft.sampling.schedule import frame_noise

DIRECTIONS = [("a red circle moving left", "x"), ("a red circle moving right", "x"),
              ("a blue square moving up", "y"), ("a blue square moving down", "y")]


def frame_spread(pipe, t: int, fps: int) -> list[float]:
    """Relative distance of each frame's output from the middle frame's, with one noise draw in all frames."""
    channels, frames = pipe.config.model.autoencoder.embed_dim, pipe.config.sampling.frames
    size = pipe.config.sampling.height // pipe.autoencoder.downsample
    x = torch.randn(1, channels, 1, size, size, generator=torch.Generator().manual_seed(0)).repeat(1, 1, frames, 1, 1)
    out = pipe.denoiser(x, pipe.encode_prompts([DIRECTIONS[0][0]]), None, fps, 1.0)(x, t)
    middle = out[:, :, frames // 2]
    return [float((out[:, :, f] - middle).norm() / middle.norm()) for f in range(frames)]


def mean_drift(pipe, prompt: str, axis: str, t: int, fps: int, guidance: float, seeds: int) -> float:
    """Pixels the decoded mean estimate's centre moves along `axis` (x: right, y: down is positive)."""
    s = pipe.config.sampling
    channels, size = pipe.config.model.autoencoder.embed_dim, s.height // pipe.autoencoder.downsample
    a = float(pipe.schedule.alphas_cumprod[t])
    cond, uncond = pipe.encode_prompts([prompt]), pipe.encode_prompts([""])
    estimates = []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        x = frame_noise(pipe.schedule, lambda n: torch.randn(1, channels, n, size, size, generator=gen),
                        s.frames)
        eps = pipe.denoiser(x, cond, uncond, fps, guidance)(x, t)
        estimates.append((x - (1 - a) ** 0.5 * eps) / a ** 0.5)
    video = pipe.autoencoder.decode(torch.cat(estimates).mean(0, keepdim=True))[0]  # [3, T, H, W]
    light = (video.clamp(-1, 1) + 1).mean(0)
    light = (light - light.flatten(1).median(1).values[:, None, None]).clamp(min=0)  # above the background
    profile = light.sum(1 if axis == "x" else 2)  # [T, W] or [T, H]
    centre = (profile / profile.sum(1, keepdim=True) * torch.arange(profile.shape[1])).sum(1)
    return float(centre[-4:].mean() - centre[:4].mean())


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="config of the model (default: the shapes preset)")
    parser.add_argument("--ckpt", type=Path, help="checkpoint (default: the preset's)")
    parser.add_argument("--run", type=Path, help="the latest checkpoint of this training run")
    parser.add_argument("--levels", type=int, nargs="+", default=[961, 700, 400], help="timesteps")
    parser.add_argument("--seeds", type=int, default=6, help="noise draws averaged for the mean estimate")
    parser.add_argument("--guidance", type=float, default=5.0)
    args = parser.parse_args()
    args.device = "cpu"
    pipe = load(args)
    fps = pipe.config.sampling.fps
    print("| t | outputs of identical frames, largest distance from the middle frame | drift (px): "
          + " | ".join(p.split()[-1] for p, _ in DIRECTIONS) + " |")
    print("|---|---|" + "---|" * len(DIRECTIONS))
    for t in args.levels:
        spread = max(frame_spread(pipe, t, fps))
        drifts = [mean_drift(pipe, p, axis, t, fps, args.guidance, args.seeds) for p, axis in DIRECTIONS]
        print(f"| {t} | {spread:.1%} | " + " | ".join(f"{d:+.1f}" for d in drifts) + " |")


if __name__ == "__main__":
    main()
