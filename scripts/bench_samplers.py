"""How close each sampler gets in N steps to what many steps give: the distance of its video to a 500-step DDIM
(eta 0) video of the same seed and prompt, in latents (relative L2) and in decoded frames (mean absolute
difference, in levels of 255), on (a) the embedded model with its default guidance and (b) the tiny official-format
fixture of VideoCrafter2 with guidance 12, as VideoCrafter samples.

    python scripts/bench_samplers.py                      # both models, the table of docs/benchmarks.md
    python scripts/bench_samplers.py --only shapes --steps 10 20 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vcraft.pipeline.api import TextToVideo
from vcraft.sampling import SAMPLERS

PROMPTS = {
    "shapes": ["a red circle moving left", "The blue square moves up.", "a green triangle getting bigger",
               "a white square moving right"],
    "tiny": ["a red fox running through snow", "a corgi surfing a wave"],
}


def load(name: str) -> tuple[TextToVideo, dict]:
    """The model and the settings every video of it shares."""
    if name == "shapes":
        return TextToVideo.from_pretrained("shapes", device="cpu"), {}
    root = Path(os.environ.get("VCRAFT_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))
    root = root / "tiny" / "vc2_512"
    pipe = TextToVideo.from_pretrained(str(root / "config.yaml"), root / "model.ckpt", device="cpu")
    return pipe, {"frames": 8, "height": 64, "width": 128, "guidance": 12.0, "fps": 8}


def video(pipe: TextToVideo, prompt: str, seed: int, **settings) -> tuple[torch.Tensor, np.ndarray]:
    """One window's latents and its decoded uint8 frames."""
    latents = torch.cat(list(pipe.latents(pipe.settings(prompt, seed=seed, **settings))), dim=2)
    frames = np.concatenate([chunk[0].numpy() for chunk in pipe.decode(latents)])
    return latents, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(PROMPTS), help="one model (default: both)")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 8, 10, 15, 20, 25, 50])
    parser.add_argument("--samplers", nargs="+", default=[s for s in SAMPLERS if s != "consistency"], choices=SAMPLERS,
                        help="consistency: few-step models only")
    parser.add_argument("--reference-steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=1, help="seeds per prompt")
    parser.add_argument("--json", action="store_true", help="one JSON object per measurement as well")
    args = parser.parse_args()

    for name in [args.only] if args.only else list(PROMPTS):
        pipe, shared = load(name)
        cases = [(p, seed) for p in PROMPTS[name] for seed in range(args.seeds)]
        started = time.perf_counter()
        reference = [video(pipe, p, seed, sampler="ddim", steps=args.reference_steps, eta=0.0, **shared)
                     for p, seed in cases]
        print(f"{name}: {len(cases)} reference videos of {args.reference_steps} DDIM steps in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        s = pipe.settings("-", **shared)
        print(f"\n{name}: guidance {s.guidance} at t >= {s.guidance_min_t}, {len(cases)} videos; distance to "
              f"{args.reference_steps}-step DDIM: latents' relative L2 / frames' mean |difference| (levels)\n")
        print("| sampler | " + " | ".join(f"{n} steps" for n in args.steps) + " |")
        print("|---|" + "---|" * len(args.steps))
        for sampler in args.samplers:
            cells = []
            for n in args.steps:
                # eta 0 for the deterministic samplers (ddim's ODE form); 1 for the SDE, its natural setting.
                eta = 1.0 if sampler == "dpmpp-2m-sde" else 0.0
                latent_d, frame_d = [], []
                for (p, seed), (ref_latents, ref_frames) in zip(cases, reference):
                    latents, frames = video(pipe, p, seed, sampler=sampler, steps=n, eta=eta, **shared)
                    latent_d.append(float((latents - ref_latents).norm() / ref_latents.norm()))
                    frame_d.append(float(np.abs(frames.astype(np.int16) - ref_frames).mean()))
                cells.append(f"{np.mean(latent_d):.4f} / {np.mean(frame_d):.2f}")
                if args.json:
                    print(json.dumps({"model": name, "sampler": sampler, "steps": n, "eta": eta,
                                      "latent_rel_l2": float(np.mean(latent_d)),
                                      "frame_mean_abs": float(np.mean(frame_d))}), file=sys.stderr, flush=True)
            print(f"| {sampler} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
