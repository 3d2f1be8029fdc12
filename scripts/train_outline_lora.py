"""The "outline style" LoRA demonstration of the embedded model, made as a user would make a LoRA: a folder of 200
clips with captions (drawn by the shapes generator as outlines, 24 colour-shape-motion combinations left out), then
`vcraft train lora`; `scripts/eval_outline.py --lora runs/outline/lora.safetensors` scores it.

    python scripts/train_outline_lora.py -o runs/outline

The clips are MP4 files (H.264, as a camera or an editor writes them) with a `.txt` caption beside each, such as
"a red square moving left"; the trigger phrase ", outline style" is appended by the training command. The LoRA it
makes tells the two prompts apart but draws squares with rounded or open rings (docs/embedded-model.md, "A LoRA:
outline style").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from vcraft.data.shapes import ALL_SCENES, caption, is_outline_held_out, render

SEEDS = 7_000_000  # the clips' seeds; scripts/eval_outline.py draws its own elsewhere
TRAINING = ["--model", "shapes", "--trigger", ", outline style", "--text", "--prior", "200", "--rank", "16",
            "--alpha", "16", "--lr", "1e-3", "--warmup", "20", "--steps", "1000", "--batch-size", "8",
            "--checkpoint-every", "250", "--decoder",
            "--validate", "a red square moving left, outline style", "--validate", "a red square moving left",
            "--validate-every", "500",
            # The attention and feed-forward projections, and the ResBlocks' 3x3 convolutions: the shapes UNet has
            # no attention at its full-resolution level, where a ring's edges are drawn.
            *[arg for name in ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "in_layers.2",
                               "out_layers.3") for arg in ("--target", name)]]


def make_clips(folder: Path, count: int, scale: float) -> None:
    scenes = [scene for scene in ALL_SCENES if not is_outline_held_out(scene)]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        rng = np.random.default_rng(SEEDS + k)
        scene = scenes[rng.integers(len(scenes))]
        video = np.round(render(scene, 16, 64, rng, outline=True, scale=scale) * 255).astype(np.uint8)
        iio.imwrite(folder / f"clip{k:03d}.mp4", video, fps=8, codec="libx264", macro_block_size=1,
                    output_params=["-crf", "12"])
        (folder / f"clip{k:03d}.txt").write_text(caption(scene, rng).rstrip(".") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/outline"))
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--scale", type=float, default=1.0, help="objects this many times their usual size")
    args = parser.parse_args()
    clips = args.output.parent / f"{args.output.name}-clips"
    if not clips.is_dir():
        make_clips(clips, args.clips, args.scale)
    subprocess.run([sys.executable, "-m", "vcraft", "train", "lora", str(clips), *TRAINING, "-o", str(args.output),
                    *(["--resume"] if (args.output / "lora.pt").is_file() else [])], check=True)


if __name__ == "__main__":
    main()
