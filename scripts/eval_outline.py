"""Score the embedded model's "outline style" LoRA from the pixels, on the 24 colour-shape-motion combinations its
clips never showed (data.shapes.is_outline_held_out) and seeds they never used:

    python scripts/eval_outline.py --lora runs/outline/lora.safetensors            # 2 seeds each
    python scripts/eval_outline.py --lora runs/outline/lora.safetensors --seeds 1
    python scripts/eval_outline.py --lora runs/outline/lora.safetensors --shape square --scale 0.8 --set steps=25

`--shape`, `--scale` (the LoRA's) and `--set` (a sampling setting of `vcraft generate`, by its Python name) are for
probing what the scores depend on; the issue's measures are the script's defaults.

Three conditions: the LoRA with the trigger phrase (the object should be an outline: at least a quarter of its filled
silhouette is background), the LoRA without it (filled shapes), and the trigger without the LoRA (the base model never
learned it: filled shapes). Each video's colour, shape (read from its silhouette) and motion are scored too, and the
share of its frames whose ring is closed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from vcraft.app.prompts import setting_value
from vcraft.data.measure import (
    closed_share,
    hollowness,
    measure_colour,
    measure_motion,
    measure_shape,
    object_masks,
    silhouettes,
)
from vcraft.data.shapes import ALL_SCENES, SHAPES, caption, is_outline_held_out
from vcraft.errors import VcraftError
from vcraft.pipeline.api import TextToVideo

TRIGGER = ", outline style"
OUTLINE = 0.25  # the share of the silhouette that is background above which an object is an outline
EVAL_SEEDS = 8_000_000  # the clips used 7,000,000 on (scripts/train_outline_lora.py)


def score(video: np.ndarray, scene) -> dict:
    masks = object_masks(video / 255.0)
    hollow, filled = hollowness(masks), silhouettes(masks)  # a ring's area is not the shape's: read its silhouette
    return {"drawn": scene.shape, "outline": hollow is not None and hollow >= OUTLINE, "hollowness": hollow,
            "closed": closed_share(masks) or 0.0,
            "colour": measure_colour(video / 255.0, masks) == scene.colour,
            "shape": measure_shape(filled) == scene.shape, "motion": measure_motion(filled) == scene.motion}


def summarise(rows: list[dict]) -> dict:
    """The share of `score` rows right in each measure (shape also for each shape asked for), their median hollowness,
    the share of their frames whose ring is closed (not a measure the issue sets: a ring open at a side fills less of
    its box than its shape does) and their count."""
    summary = {key: float(np.mean([r[key] for r in rows])) for key in ("outline", "colour", "shape", "motion")}
    summary["shape_of_each"] = {shape: float(np.mean([r["shape"] for r in rows if r["drawn"] == shape]))
                                for shape in sorted({r["drawn"] for r in rows})}
    summary["median_hollowness"] = float(np.median([r["hollowness"] or 0.0 for r in rows]))
    summary["closed_frames"] = float(np.mean([r["closed"] for r in rows]))
    summary["videos"] = len(rows)
    return summary


def setting(text: str) -> tuple[str, object]:
    """`steps=25` -> ("steps", 25): a sampling setting by its `Settings` name, read as a prompt file's cell is."""
    name, _, value = text.partition("=")
    return name, setting_value(name, value, "--set")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora", required=True, help="the LoRA: a file or an official name")
    parser.add_argument("--seeds", type=int, default=2, help="videos per combination and condition")
    parser.add_argument("--shape", choices=SHAPES, help="only the combinations of this shape")
    parser.add_argument("--scale", type=float, default=1.0, help="the LoRA's scale")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="NAME=VALUE",
                        help="a sampling setting instead of the preset's, e.g. steps=25 or guidance_min_t=0")
    args = parser.parse_args()
    base = TextToVideo.from_pretrained("shapes", device="cpu", dtype="fp32")
    styled = TextToVideo.from_pretrained("shapes", device="cpu", dtype="fp32", lora=[(args.lora, args.scale)])
    sampling = dict(args.set)
    try:
        styled.settings("a red square", seed=0, **sampling)  # a bad --set is one line, before the first video
    except VcraftError as error:
        parser.error(str(error))
    # numbered among all the held-out combinations, so that a video's seed does not depend on --shape
    scenes = [(k, scene) for k, scene in enumerate(s for s in ALL_SCENES if is_outline_held_out(s))
              if args.shape in (None, scene.shape)]
    conditions = {"lora + trigger": (styled, TRIGGER), "lora, no trigger": (styled, ""),
                  "trigger, no lora": (base, TRIGGER)}
    results, started = {name: [] for name in conditions}, time.perf_counter()
    for done, (k, scene) in enumerate(scenes, 1):
        for j in range(args.seeds):
            seed = EVAL_SEEDS + 100 * k + j
            text = caption(scene, np.random.default_rng(seed)).rstrip(".")
            for name, (pipe, trigger) in conditions.items():
                results[name].append(score(pipe(text + trigger, seed=seed, **sampling), scene))
        print(f"[{done}/{len(scenes)}] {scene}", file=sys.stderr)
    summary = {name: summarise(rows) for name, rows in results.items()}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
