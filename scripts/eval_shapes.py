"""Score the shapes model: generate videos for held-out and seen (colour, shape, motion) combinations, read
back from the pixels what each video shows, and print the accuracy per attribute.

    python scripts/eval_shapes.py                         # the shipped model, with its default settings
    python scripts/eval_shapes.py --run runs/shapes       # the latest checkpoint of a training run
    python scripts/eval_shapes.py --steps 50 --guidance 7 --json
    python scripts/eval_shapes.py --sampler dpmpp-2m --steps 10 --seen 0    # the held-out combinations only

Prompts use every accepted phrasing (articles, capitalisation, optional suffix and period), drawn at random
per video; each combination is rendered with several seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vcraft.config import load_config, load_preset
from vcraft.data.measure import ATTRIBUTES, measure
from vcraft.data.shapes import HELD_OUT_SCENES, TRAIN_SCENES, Scene, caption
from vcraft.loaders.devices import resolve_device
from vcraft.pipeline.api import TextToVideo
from vcraft.sampling import SAMPLERS


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the model `load` returns: the shipped one unless told otherwise."""
    parser.add_argument("--config", type=Path, help="config of the model (default: the shapes preset)")
    parser.add_argument("--ckpt", type=Path, help="checkpoint (default: the preset's)")
    parser.add_argument("--run", type=Path, help="the latest checkpoint of this training run instead")
    parser.add_argument("--device", default="cpu")


def load(args: argparse.Namespace, encoder: bool = False) -> TextToVideo:
    if args.run is None:
        cfg = load_config(args.config) if args.config else load_preset("shapes")
        return TextToVideo.from_config(cfg, args.ckpt, device=args.device, dtype="fp32", encoder=encoder)
    from vcraft.loaders.loading import load_models
    from vcraft.train import checkpoint_of_run
    from vcraft.train.stages import frozen_config

    cfg = load_config(args.run / "config.yaml")
    device = resolve_device(args.device)
    # A run's checkpoint holds the model without the control adapter, which the preset's config names.
    models = load_models(frozen_config(cfg), checkpoint_of_run(args.run), str(args.run), device, encoder=encoder)
    return TextToVideo(cfg, models, device, torch.float32)


def jobs(seen: int, seeds: int, base_seed: int) -> list[tuple[str, Scene, str, int]]:
    """(split, scene, prompt, seed) for every held-out scene and `seen` training scenes."""
    rng = np.random.default_rng(base_seed)
    trained = [TRAIN_SCENES[i] for i in rng.choice(len(TRAIN_SCENES), size=seen, replace=False)]
    out = []
    for split, scenes in (("held-out", HELD_OUT_SCENES), ("seen", trained)):
        for scene in scenes:
            for _ in range(seeds):
                out.append((split, scene, caption(scene, rng), base_seed + len(out)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_arguments(parser)
    parser.add_argument("--seeds", type=int, default=2, help="videos per combination")
    parser.add_argument("--seen", type=int, default=24, help="how many seen combinations to score")
    parser.add_argument("--sampler", choices=SAMPLERS)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--guidance-min-t", type=int)
    parser.add_argument("--eta", type=float)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="one JSON object per video, then the summary")
    args = parser.parse_args()

    pipe = load(args)
    chosen = {"sampler": args.sampler, "steps": args.steps, "guidance": args.guidance,
              "guidance_min_t": args.guidance_min_t, "eta": args.eta}
    s = pipe.settings("-", **chosen)
    todo = jobs(args.seen, args.seeds, args.seed)
    print(f"{len(todo)} videos, {s.sampler}, {s.steps} steps, guidance {s.guidance} at t >= {s.guidance_min_t}, eta {s.eta}",
          file=sys.stderr)
    started = time.perf_counter()
    results = []
    for split, scene, prompt, seed in todo:
        seen = measure(pipe(prompt, seed=seed, **chosen).astype(np.float32) / 255)
        row = {"split": split, "prompt": prompt, "seed": seed, **{f"want_{a}": getattr(scene, a) for a in
               ATTRIBUTES}, **{f"got_{a}": seen[a] for a in ATTRIBUTES}}
        results.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    elapsed = time.perf_counter() - started

    print("| split | videos | colour | shape | motion | all three |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for split in ("held-out", "seen"):
        rows = [r for r in results if r["split"] == split]
        if not rows:  # --seen 0
            continue
        right = {a: np.mean([r[f"want_{a}"] == r[f"got_{a}"] for r in rows]) for a in ATTRIBUTES}
        right["all"] = np.mean([all(r[f"want_{a}"] == r[f"got_{a}"] for a in ATTRIBUTES) for r in rows])
        summary[split] = {k: float(v) for k, v in right.items()}
        print(f"| {split} | {len(rows)} | " + " | ".join(f"{100 * right[a]:.0f}%" for a in (*ATTRIBUTES, "all"))
              + " |")
    print(f"{len(results)} videos in {elapsed:.0f} s", file=sys.stderr)
    if args.json:
        print(json.dumps({"summary": summary, "sampler": s.sampler, "steps": s.steps, "guidance": s.guidance,
                          "guidance_min_t": s.guidance_min_t, "eta": s.eta}))


if __name__ == "__main__":
    main()
