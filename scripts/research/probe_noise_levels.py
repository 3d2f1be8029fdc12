"""Where along the noise schedule the shapes model loses what a clip shows: clips drawn like the training
data are encoded, noised to timestep t and denoised by DDIM from t with their own captions; the colour, shape
and motion read back from the result are compared with the clip's. Near the end of the schedule this is plain
generation; the lower t, the more of the clip's layout survives the noise for the model to build on.

    python scripts/research/probe_noise_levels.py                  # the shipped model
    python scripts/research/probe_noise_levels.py --config runs/X/config.yaml --ckpt runs/X/model.safetensors
    python scripts/research/probe_noise_levels.py --run runs/X          # a training run's latest checkpoint

With `--outline --lora FILE`, the clips are the outline LoRA's: true outlines of the combinations its clips never
showed (scripts/train_outline_lora.py), captioned with the trigger and scored as scripts/eval_outline.py scores
(`--shape square`: of one shape only; `--filled`: the same clips drawn filled, without the trigger, for comparison;
`--seen`: of the combinations its clips showed instead).
Near t = 0 this asks whether the LoRA keeps an outline it is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for eval_shapes and eval_outline
from eval_outline import TRIGGER, score  # noqa: E402  the outline LoRA's trigger and scoring
from eval_shapes import load, model_arguments  # noqa: E402  the same choice of model as the evaluation

from vcraft.data.measure import ATTRIBUTES, measure
from vcraft.data.shapes import ALL_SCENES, Scene, caption, is_outline_held_out, render, sample
from vcraft.sampling.conditioning import Conditioning
from vcraft.sampling.ddim import ddim_timesteps
from vcraft.sampling.ddim import sample as ddim_sample
from vcraft.sampling.schedule import Schedule, frame_noise, q_sample


def truncated(schedule: Schedule, t: int) -> Schedule:
    """The schedule's first t + 1 steps: DDIM over it starts near t instead of near the end."""
    return replace(schedule, alphas_cumprod=schedule.alphas_cumprod[:t + 1], scale_arr=schedule.scale_arr[:t + 1],
                   betas=schedule.betas[:t + 1])


def outline_clips(seed: int, count: int, frames: int, size: int, shape: str | None, filled: bool, seen: bool = False
                  ) -> list[tuple[np.ndarray, str, Scene]]:
    """`count` (clip, caption, scene) triples of true outlines of the outline LoRA's held-out combinations (`seen`: of
    those its clips showed), the captions with its trigger (`filled`: the same objects filled, without it); clip k
    from seed + k, the combinations in turn."""
    scenes = [s for s in ALL_SCENES if is_outline_held_out(s) != seen and shape in (None, s.shape)]
    out = []
    for k in range(count):
        rng, scene = np.random.default_rng(seed + k), scenes[k % len(scenes)]
        clip = render(scene, frames, size, rng, outline=not filled)
        out.append((clip, caption(scene, rng).rstrip(".") + ("" if filled else TRIGGER), scene))
    return out


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_arguments(parser)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--levels", type=int, nargs="+", default=[300, 500, 700, 800, 900, 961])
    parser.add_argument("--held-out", action="store_true", help="clips of held-out combinations")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps from t down")
    parser.add_argument("--guidance", type=float, help="default: the config's")
    parser.add_argument("--guidance-min-t", type=int, default=0,
                        help="guided only at timesteps from this one (default 0: throughout, as in docs/notes.md)")
    parser.add_argument("--seed", type=int, default=777000, help="clip k is drawn from seed + k")
    parser.add_argument("--lora", help="a LoRA file merged into the model")
    parser.add_argument("--outline", action="store_true", help="the outline LoRA's held-out clips, as outlines")
    parser.add_argument("--shape", choices=["circle", "square", "triangle"], help="with --outline: this shape only")
    parser.add_argument("--filled", action="store_true", help="with --outline: its clips filled, without the trigger")
    parser.add_argument("--seen", action="store_true", help="with --outline: the combinations its clips showed")
    args = parser.parse_args()

    pipe = load(args, encoder=True)
    if args.lora:
        pipe.add_lora(args.lora)
    s = pipe.config.sampling
    guidance = s.guidance if args.guidance is None else args.guidance
    if args.outline:
        triples = outline_clips(args.seed, args.clips, s.frames, s.height, args.shape, args.filled, args.seen)
    else:
        triples = [sample(args.seed + k, s.frames, s.height, args.held_out) for k in range(args.clips)]
    clips, captions, scenes = zip(*triples)
    x0 = pipe.autoencoder.encode(torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3) * 2 - 1)
    cond, uncond = pipe.encode_prompts(list(captions)), pipe.encode_prompts([""] * args.clips)
    gen = torch.Generator().manual_seed(args.seed)
    noise = frame_noise(pipe.schedule, lambda n: torch.randn(*x0.shape[:2], n, *x0.shape[3:], generator=gen),
                        x0.shape[2])
    denoiser = pipe.denoiser(Conditioning(cond, uncond, torch.full((args.clips,), s.fps)), guidance,
                             args.guidance_min_t)

    if args.outline:
        kind = ("seen-combination " if args.seen else "") + ("filled" if args.filled else "outline")
    else:
        kind = "held-out" if args.held_out else "seen"
    columns = ("outline", *ATTRIBUTES) if args.outline else ATTRIBUTES
    print(f"{args.clips} {kind} clips, {args.steps} steps from t, guidance {guidance} from t = "
          f"{args.guidance_min_t}; clips right out of {args.clips}")
    print("| t | signal sqrt(a_t) | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for level in args.levels:
        started = time.perf_counter()
        schedule = truncated(pipe.schedule, level)
        top = ddim_timesteps(args.steps, schedule.timesteps)[-1]
        x = q_sample(schedule, x0, torch.full((args.clips,), top), noise)
        out = ddim_sample(denoiser, x, schedule, args.steps)
        video = np.concatenate([c.numpy() for c in pipe.decode(out)], axis=1).astype(np.float32) / 255
        if args.outline:
            rows = [score(v * 255, scene) for v, scene in zip(video, scenes)]
            right = [sum(r[a] for r in rows) for a in columns]
        else:
            seen = [measure(v) for v in video]
            right = [sum(r[a] == getattr(sc, a) for r, sc in zip(seen, scenes)) for a in ATTRIBUTES]
        signal = float(schedule.alphas_cumprod[top]) ** 0.5
        print(f"| {top} | {signal:.3f} | " + " | ".join(map(str, right)) + " |", flush=True)
        print(f"t = {top}: {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
