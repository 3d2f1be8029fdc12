"""Check prompt schedules of the shapes model from their pixels: 32 frames of one prompt, then 32 of another; does
each 16-frame stretch show what its prompt asks for, and is the switch a jump larger than the change between
neighbouring frames elsewhere (as scripts/check_long_video.py measures joins)?

    python scripts/check_schedule.py                       # mask, replace and freenoise, 3 seeds each
    python scripts/check_schedule.py --extend mask --seeds 6 --ckpt runs/shapes/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from eval_shapes import load, model_arguments  # the same choice of model as the evaluation

from vcraft.data.measure import measure_colour, measure_motion, object_masks

# (first prompt, second prompt, what changes, its value in the first half and in the second)
SCHEDULES = [("a red circle moving left", "a red circle moving up", "motion", "left", "up"),
             ("a red circle moving left", "a blue circle moving left", "colour", "red", "blue"),
             ("a green square moving right", "a green square moving down", "motion", "right", "down")]


def check(video: np.ndarray, what: str, before: str, after: str, switch: int) -> dict:
    masks = object_masks(video)
    stretches = [(video[i:i + 16], masks[i:i + 16]) for i in range(0, len(video), 16)]
    read = [measure_motion(m) if what == "motion" else measure_colour(v, m) for v, m in stretches]
    wanted = [before if 16 * k < switch else after for k in range(len(stretches))]
    change = np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))
    return {"stretches": read, "right": float(np.mean([r == w for r, w in zip(read, wanted)])),
            "switch_jump": float(change[switch - 1] / np.median(np.delete(change, switch - 1)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extend", nargs="+", default=["mask", "replace", "freenoise"])
    parser.add_argument("--seeds", type=int, default=3)
    model_arguments(parser)
    args = parser.parse_args()
    pipe = load(args)
    started = time.perf_counter()
    for extend in args.extend:
        rows = []
        for first, second, what, before, after in SCHEDULES:
            for seed in range(args.seeds):
                video = pipe([first, second], at=[0, 32], frames=64, seed=seed, extend=extend)
                row = check(video.astype(np.float32) / 255, what, before, after, 32)
                rows.append({**row, "what": what})
                print(f"{extend} {first!r} -> {second!r} seed {seed}: {row['stretches']}, switch "
                      f"{row['switch_jump']:.2f}x", file=sys.stderr)
        # A change of colour is made in one frame, a change of motion should not be: their switches apart.
        jumps = {what: [r["switch_jump"] for r in rows if r["what"] == what] for what in ("colour", "motion")}
        summary = {"extend": extend, "videos": len(rows), "right_stretches": float(np.mean([r["right"] for r in rows])),
                   **{f"{what}_switch_median": float(np.median(j)) for what, j in jumps.items()},
                   **{f"{what}_switch_worst": float(max(j)) for what, j in jumps.items()}}
        print(json.dumps(summary), flush=True)
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
