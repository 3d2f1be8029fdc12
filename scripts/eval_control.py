"""Score the embedded model's control adapter: for (control video, caption) pairs drawn from seeds never trained on
(data/paths.py: circles, zigzags, curves, stops, changes of speed, still), generate with --control-video and read
back from the pixels where the object is in every frame, its colour and its shape.

    python scripts/eval_control.py                               # the shipped adapter, 48 pairs
    python scripts/eval_control.py --adapter runs/shapes-control/adapter.safetensors --pairs 96

The path error of a video is the mean distance, in pixels of the 64x64 frame, between the generated object's centre
and the control object's centre, frame by frame. `--no-control` renders the same prompts without the control video,
as a baseline for the same measure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from vcraft.data.measure import centres, measure_colour, measure_shape, object_masks
from vcraft.data.paths import pair
from vcraft.pipeline.api import TextToVideo

EVAL_SEEDS = 900_000  # training draws its pairs from seed 500,000 on (train/control.py): these are never seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, help="the adapter's file (default: the preset's)")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--no-control", action="store_true", help="the same prompts without control (baseline)")
    args = parser.parse_args()
    pipe = TextToVideo.from_pretrained("shapes", device="cpu", dtype="fp32", adapter=args.adapter)
    rows, started = [], time.perf_counter()
    for k in range(args.pairs):
        control, _, text, info = pair(EVAL_SEEDS + k)
        uint8 = np.round(control * 255).astype(np.uint8)
        video = pipe(text, seed=k, **({} if args.no_control else {"control_video": uint8})) / 255.0
        masks = object_masks(video)
        error = np.hypot(*(centres(masks) - centres(object_masks(uint8 / 255.0))).T)
        rows.append({"path": info["path"], "prompt": text, "error": float(np.nanmean(error)),
                     "missing_frames": int(np.isnan(error).sum()),
                     "colour": measure_colour(video, masks) == info["colour"],
                     "shape": measure_shape(masks) == info["shape"]})
        print(f"[{k + 1}/{args.pairs}] {info['path']:12s} {text!r}: {rows[-1]['error']:.2f} px, colour "
              f"{rows[-1]['colour']}, shape {rows[-1]['shape']}", file=sys.stderr)
    errors = np.array([r["error"] for r in rows])
    by_path = defaultdict(list)
    for r in rows:
        by_path[r["path"]].append(r["error"])
    summary = {"pairs": len(rows), "control": not args.no_control, "mean_error_px": float(np.nanmean(errors)),
               "median_error_px": float(np.nanmedian(errors)), "worst_error_px": float(np.nanmax(errors)),
               "videos_within_3px": float(np.mean(errors <= 3)),
               "colour": float(np.mean([r["colour"] for r in rows])),
               "shape": float(np.mean([r["shape"] for r in rows])),
               "error_by_path": {k: float(np.mean(v)) for k, v in sorted(by_path.items())},
               "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
