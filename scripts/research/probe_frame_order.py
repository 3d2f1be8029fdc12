"""Does the shapes model tell its frames apart? Two measurements at chosen timesteps:

1. Same noise in every frame: how far each frame's output is from the middle frame's. A UNet that knows
   nothing of frame order gives identical frames back.
2. Motion share: from pure noise, the model's clean-clip estimate (mean over seeds) for one seen caption of each
   motion, minus the caption's still mean (its mean latent clip averaged over time), projected on the motion
   of that mean clip (the mean clip minus its still mean; from clips rendered by the data generator). 0: the
   estimate holds still; 1: it moves as the data's mean does. At the noisiest steps the estimate is all a
   sample starts from, so a model with a share near 0 there does not start motion.

    python scripts/research/probe_frame_order.py --config runs/shapes6/config.yaml --ckpt runs/shapes6/model.safetensors
    python scripts/research/probe_frame_order.py --run runs/shapes10 --levels 961 800
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for eval_shapes
from eval_shapes import load, model_arguments  # noqa: E402  the same choice of model as the evaluation

from vcraft.data.shapes import MOTIONS, TRAIN_SCENES, Scene, render
from vcraft.sampling.conditioning import Conditioning
from vcraft.sampling.schedule import frame_noise
from vcraft.train import encode_dataset

SCENES = [next(s for s in TRAIN_SCENES if s.motion == m) for m in MOTIONS]


def prompt_of(scene: Scene) -> str:
    return f"a {scene.colour} {scene.shape} " + (scene.motion if scene.motion in ("growing", "shrinking")
                                                  else f"moving {scene.motion}")


def frame_spread(pipe, t: int, fps: int) -> list[float]:
    """Relative distance of each frame's output from the middle frame's, with one noise draw in all frames."""
    channels, frames = pipe.config.model.autoencoder.embed_dim, pipe.config.sampling.frames
    size = pipe.config.sampling.height // pipe.autoencoder.downsample
    x = torch.randn(1, channels, 1, size, size, generator=torch.Generator().manual_seed(0)).repeat(1, 1, frames, 1, 1)
    cond = Conditioning(pipe.encode_prompts([prompt_of(SCENES[0])]), None, torch.full((1,), fps))
    out = pipe.denoiser(cond, 1.0)(x, t)
    middle = out[:, :, frames // 2]
    return [float((out[:, :, f] - middle).norm() / middle.norm()) for f in range(frames)]


def mean_clip(pipe, scene: Scene, clips: int) -> torch.Tensor:
    """The mean latent clip of `clips` renderings of `scene`, as the training data are drawn and encoded."""
    s = pipe.config.sampling
    videos = np.stack([np.round(render(scene, s.frames, s.height, np.random.default_rng(k)) * 255)
                       for k in range(clips)]).astype(np.uint8)
    return encode_dataset(pipe.autoencoder, videos).mean(0) * pipe.autoencoder.scale_factor


def motion_share(pipe, scene: Scene, mean: torch.Tensor, t: int, fps: int, guidance: float, seeds: int) -> float:
    s = pipe.config.sampling
    a = float(pipe.schedule.alphas_cumprod[t])
    cond, uncond = pipe.encode_prompts([prompt_of(scene)]), pipe.encode_prompts([""])
    estimates = []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        x = frame_noise(pipe.schedule, lambda n: torch.randn(1, *mean.shape[:1], n, *mean.shape[2:], generator=gen),
                        s.frames)
        eps = pipe.denoiser(Conditioning(cond, uncond, torch.full((1,), fps)), guidance)(x, t)
        estimates.append((x - (1 - a) ** 0.5 * eps) / a ** 0.5)
    still = mean.mean(1, keepdim=True)
    motion = mean - still
    return float(((torch.cat(estimates).mean(0) - still) * motion).sum() / motion.pow(2).sum())


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_arguments(parser)
    parser.add_argument("--levels", type=int, nargs="+", default=[961, 700, 400], help="timesteps")
    parser.add_argument("--seeds", type=int, default=6, help="noise draws averaged for the estimate")
    parser.add_argument("--clips", type=int, default=64, help="renderings averaged for each caption's mean clip")
    parser.add_argument("--guidance", type=float, default=1.0, help="of the estimate (1: the conditional one)")
    args = parser.parse_args()
    pipe = load(args)
    fps = pipe.config.sampling.fps
    means = [mean_clip(pipe, scene, args.clips) for scene in SCENES]
    print("| t | outputs of identical frames, largest distance from the middle frame | motion share: "
          + " | ".join(prompt_of(scene) for scene in SCENES) + " |")
    print("|---|---|" + "---|" * len(SCENES))
    for t in args.levels:
        spread = max(frame_spread(pipe, t, fps))
        shares = [motion_share(pipe, scene, mean, t, fps, args.guidance, args.seeds)
                  for scene, mean in zip(SCENES, means)]
        print(f"| {t} | {spread:.1%} | " + " | ".join(f"{v:+.2f}" for v in shares) + " |")


if __name__ == "__main__":
    main()
