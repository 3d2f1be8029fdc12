"""How visible is an object of each colour in the autoencoder's latents? For every colour: the distance of the
latent pixels inside a square from the background's (its median latent, away from the object), averaged over
frames and renderings, in the diffusion model's units (latents times the scale factor, so the noise has std 1).
A colour whose objects sit close to the background is drowned by the diffusion noise early in the schedule,
and its layout has to be made in the last few steps.

    python scripts/research/probe_latent_contrast.py                      # the shipped weights
    python scripts/research/probe_latent_contrast.py --run runs/shapes12  # a training run's autoencoder
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for eval_shapes
from eval_shapes import load, model_arguments  # noqa: E402  the same choice of model as the evaluation

from vcraft.data.measure import object_masks
from vcraft.data.shapes import COLOURS, Scene, render
from vcraft.train import to_pixels


@torch.inference_mode()
def contrast(pipe, colour: str, renderings: int) -> float:
    s = pipe.config.sampling
    f = pipe.autoencoder.downsample
    values = []
    for seed in range(renderings):
        video = render(Scene(colour, "square", "right"), s.frames, s.height, np.random.default_rng(seed))
        z = pipe.autoencoder.encode(to_pixels(np.round(video * 255).astype(np.uint8)[None]))[0]
        inside = torch.from_numpy(object_masks(video, threshold=0.3)).float()  # [T, H, W]
        full = F.avg_pool2d(inside, f) > 0.99  # latent pixels wholly inside the object
        away = F.max_pool2d(inside, 3 * f, f, f) == 0  # latent pixels at least a latent pixel from it
        z = z.permute(1, 2, 3, 0)  # [T, h, w, c]
        background = z[away].median(0).values
        values.append(float((z[full] - background).norm(dim=-1).mean()))
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_arguments(parser)
    parser.add_argument("--renderings", type=int, default=4, help="clips averaged per colour")
    args = parser.parse_args()
    pipe = load(args, encoder=True)
    print("| " + " | ".join(COLOURS) + " |")
    print("|" + "---|" * len(COLOURS))
    print("| " + " | ".join(f"{contrast(pipe, c, args.renderings):.2f}" for c in COLOURS) + " |")


if __name__ == "__main__":
    main()
