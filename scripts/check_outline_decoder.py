"""How much of an outline the embedded model's autoencoder keeps: the true outline clips of the 24 combinations the
"outline style" LoRA's clips never showed, encoded and decoded, scored from the pixels as scripts/eval_outline.py
scores generated videos; filled clips of every combination too (a decoder LoRA should leave them as they were).

    python scripts/check_outline_decoder.py                                             # the model's own decoder
    python scripts/check_outline_decoder.py --lora runs/outline/lora.safetensors        # with a LoRA's decoder part

Only the decoder changes a round trip, so a LoRA's UNet and text-encoder pairs make no difference here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vcraft.data.measure import measure
from vcraft.data.shapes import ALL_SCENES, is_outline_held_out, render
from vcraft.pipeline.api import TextToVideo

sys.path.insert(0, str(Path(__file__).parent))
from eval_outline import score, summarise  # noqa: E402  (the same scoring as the generated videos')

SEEDS = 9_000_000  # neither the clips' (7,000,000 on) nor the evaluation's (8,000,000 on)


def round_trip(pipe: TextToVideo, video: np.ndarray) -> np.ndarray:
    return np.concatenate(list(pipe.decode(pipe.encode_frames(video))), axis=1)[0].astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora", help="a LoRA file whose decoder pairs are merged")
    parser.add_argument("--seeds", type=int, default=2, help="clips per combination")
    args = parser.parse_args()
    pipe = TextToVideo.from_pretrained("shapes", device="cpu", dtype="fp32", encoder=True,
                                       lora=[args.lora] if args.lora else [])
    outlines, filled = [], []
    for k, scene in enumerate(ALL_SCENES):
        for j in range(args.seeds):
            rng = np.random.default_rng(SEEDS + 100 * k + j)
            if is_outline_held_out(scene):
                clip = np.round(render(scene, 16, 64, rng, outline=True) * 255).astype(np.uint8)
                outlines.append(score(round_trip(pipe, clip), scene))
            clip = np.round(render(scene, 16, 64, rng) * 255).astype(np.uint8)
            seen = measure(round_trip(pipe, clip) / 255.0)
            filled.append({name: seen[name] == getattr(scene, name) for name in ("colour", "shape", "motion")})
    right = {key: float(np.mean([r[key] for r in filled])) for key in ("colour", "shape", "motion")}
    summary = {"outline clips": summarise(outlines), "filled clips": {**right, "videos": len(filled)}}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
