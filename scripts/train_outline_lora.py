"""Make the embedded model's "outline style" LoRA as a user would make one: a folder of 200 clips with captions
(drawn by the shapes generator as outlines, 24 colour-shape-motion combinations left out), then `vcraft train lora`.

    python scripts/train_outline_lora.py -o runs/outline
    cp runs/outline/lora.safetensors src/../checkpoints/shapes/loras/outline.safetensors   # what ships

The clips are MP4 files (H.264, as a camera or an editor writes them) with a `.txt` caption beside each, such as
"a red square moving left"; the trigger phrase ", outline style" is appended by the training command.
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
TRAINING = ["--model", "shapes", "--trigger", ", outline style", "--prior", "200", "--rank", "16", "--alpha", "16",
            "--lr", "1e-3", "--warmup", "20", "--steps", "1200", "--batch-size", "4", "--checkpoint-every", "200",
            "--validate", "a red square moving left, outline style", "--validate", "a blue circle growing",
            "--validate-every", "400"]


def make_clips(folder: Path, count: int) -> None:
    scenes = [scene for scene in ALL_SCENES if not is_outline_held_out(scene)]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        rng = np.random.default_rng(SEEDS + k)
        scene = scenes[rng.integers(len(scenes))]
        video = np.round(render(scene, 16, 64, rng, outline=True) * 255).astype(np.uint8)
        iio.imwrite(folder / f"clip{k:03d}.mp4", video, fps=8, codec="libx264", macro_block_size=1,
                    output_params=["-crf", "12"])
        (folder / f"clip{k:03d}.txt").write_text(caption(scene, rng).rstrip(".") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/outline"))
    parser.add_argument("--clips", type=int, default=200)
    args = parser.parse_args()
    clips = args.output.parent / f"{args.output.name}-clips"
    if not clips.is_dir():
        make_clips(clips, args.clips)
    subprocess.run([sys.executable, "-m", "vcraft", "train", "lora", str(clips), *TRAINING, "-o", str(args.output),
                    *(["--resume"] if (args.output / "lora.pt").is_file() else [])], check=True)


if __name__ == "__main__":
    main()
