"""Peak memory and time of long videos made with FreeNoise (all frames denoised at once) against `--extend replace`
(window by window), on a full-size preset with random weights (nothing to download), each case in a process of
its own so that every peak is measured from a clean start.

    python scripts/bench_freenoise.py                                   # vc2-512 on the CPU: 32, 64, 128 frames
    python scripts/bench_freenoise.py --frames 32 64 --video 256x256 --steps 1 --device cuda --dtype bf16

Reports per case: seconds of the generation (text, sampling, decoding), the peak memory (a GPU: allocated by
torch; a CPU: the peak resident set) and the part of it above the loaded model, which is what grows with length.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import random_pipe, reset_peak, sync  # noqa: E402  (a sibling script)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def case(args: argparse.Namespace) -> dict:
    from vcraft.loaders.devices import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.set_grad_enabled(False)
    pipe = random_pipe(args.model, device, dtype)
    reset_peak(device)
    loaded = peak_mib(device)
    height, width = map(int, args.video.split("x"))
    started = time.perf_counter()
    pipe("a corgi surfing a wave", seed=0, frames=args.case_frames, extend=args.case_extend, steps=args.steps,
         height=height, width=width)
    sync(device)
    peak = peak_mib(device)
    return {"extend": args.case_extend, "frames": args.case_frames, "seconds": round(time.perf_counter() - started, 1),
            "peak_mib": round(peak), "above_model_mib": round(peak - loaded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vc2-512")
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--extend", nargs="+", default=["freenoise", "replace"])
    parser.add_argument("--video", default="320x512", help="HEIGHTxWIDTH")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--case-frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--case-extend", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case_frames is not None:
        print(json.dumps(case(args)))
        return
    own = [f"--{k}={getattr(args, k)}" for k in ("model", "video", "steps", "device", "dtype")]
    print(f"{args.model} {args.video} {args.steps} step(s) {args.device} {args.dtype}", file=sys.stderr)
    for frames in args.frames:
        for extend in args.extend:
            out = subprocess.run([sys.executable, __file__, *own, "--case-frames", str(frames), "--case-extend",
                                  extend], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"error: {extend} {frames} frames failed: {out.stderr.strip().splitlines()[-1]}")
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
