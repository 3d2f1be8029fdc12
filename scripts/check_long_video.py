"""Check long videos of the shapes model from their pixels: does the object keep its colour, does every
16-frame stretch show the motion the prompt asks for, and are the joins between windows invisible?

    python scripts/check_long_video.py                      # 96 frames, the default model and settings
    python scripts/check_long_video.py --frames 256 --extend replace --json
    python scripts/check_long_video.py --uncond-without-frames   # LVDM's guidance variant, for comparison
    python scripts/check_long_video.py --run runs/X              # a training run's latest checkpoint

Seam: the mean absolute change between the two frames on either side of each window boundary, against
the median change between neighbouring frames inside windows (a seam shows up as a larger jump).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from eval_shapes import load, model_arguments  # the same choice of model as the evaluation

from vcraft.data.measure import measure_colour, measure_motion, object_masks

PROMPTS = [("a red circle moving left", "red", "left"), ("The blue triangle moves down.", "blue", "down"),
           ("a yellow square moving up", "yellow", "up"), ("a green circle sliding right", "green", "right"),
           ("a white square moving to the left", "white", "left"), ("a cyan triangle moving up", "cyan", "up")]


def boundaries(frames: int, clip: int, overlap: int) -> list[int]:
    """Indices of the first frame of every window after the first."""
    return list(range(clip, frames, clip - overlap))


def check(video: np.ndarray, colour: str, motion: str, clip: int, overlap: int, stretch: int = 16) -> dict:
    masks = object_masks(video)
    colours = [measure_colour(frame[None], mask[None]) for frame, mask in zip(video, masks, strict=True)]
    stretches = [measure_motion(masks[i:i + stretch]) for i in range(0, len(video) - stretch + 1, stretch)]
    change = np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))  # change[i]: frame i -> i + 1
    cuts = boundaries(len(video), clip, overlap)
    seams = change[[i - 1 for i in cuts]]
    inside = np.delete(change, [i - 1 for i in cuts])
    return {"colour_frames": float(np.mean([c == colour for c in colours])),
            "motion_stretches": float(np.mean([m == motion for m in stretches])),
            "stretches": stretches, "seam": float(seams.mean()), "inside_median": float(np.median(inside))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_arguments(parser)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--overlap", type=int)
    parser.add_argument("--extend", choices=["mask", "replace"])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--guidance-min-t", type=int)
    parser.add_argument("--seeds", type=int, default=2, help="videos per prompt")
    parser.add_argument("--json", action="store_true", help="one JSON object per video, then the summary")
    parser.add_argument("--uncond-without-frames", action="store_true",
                        help="guide against a pass without the kept frames (LVDM) instead of one with them")
    args = parser.parse_args()

    pipe = load(args)
    chosen = {"frames": args.frames, "overlap": args.overlap, "extend": args.extend, "steps": args.steps,
              "guidance": args.guidance, "guidance_min_t": args.guidance_min_t}
    settings = pipe.settings(PROMPTS[0][0], **chosen)
    clip = pipe.config.model.unet.temporal_length
    print(f"{settings.frames} frames, overlap {settings.overlap}, extend {settings.extend}, "
          f"{settings.steps} steps, guidance {settings.guidance} at t >= {settings.guidance_min_t}", file=sys.stderr)
    rows, started = [], time.perf_counter()
    for prompt, colour, motion in PROMPTS:
        for seed in range(args.seeds):
            one = pipe.settings(prompt, seed=seed, **chosen)
            windows = pipe.latents(one, uncond_sees_given=not args.uncond_without_frames)
            video = np.concatenate([c[0].numpy() for latents in windows for c in pipe.decode(latents)])
            video = video.astype(np.float32) / 255
            row = {"prompt": prompt, "seed": seed, **check(video, colour, motion, clip, settings.overlap)}
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            print(f"{prompt!r} seed {seed}: colour {100 * row['colour_frames']:.0f}% of frames, motion "
                  f"{100 * row['motion_stretches']:.0f}% of 16-frame stretches, seam {row['seam']:.4f} vs "
                  f"{row['inside_median']:.4f} inside", file=sys.stderr)
    summary = {
        "videos": len(rows), "frames": settings.frames, "overlap": settings.overlap, "extend": settings.extend,
        "colour_frames": float(np.mean([r["colour_frames"] for r in rows])),
        "colour_frames_worst": float(min(r["colour_frames"] for r in rows)),
        "motion_stretches": float(np.mean([r["motion_stretches"] for r in rows])),
        "seam_ratio": float(np.mean([r["seam"] for r in rows]) / np.mean([r["inside_median"] for r in rows])),
        "seam_ratio_worst": float(max(r["seam"] / max(r["inside_median"], 1e-6) for r in rows)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
