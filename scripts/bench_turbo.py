"""Seconds per video and UNet passes of VideoCrafter2 at its defaults, with UniPC in 20 steps, and of T2V-Turbo (v1 and
v2) in 4 and 8 steps, with random weights in the official layouts (nothing to download), each case in a process of its
own. The Turbo models are loaded the way their files are: v1's LoRA as an unnamed list in `unet_lora.pt`'s layout,
merged by order; v2's whole UNet as a state dict file placed strictly (`--unet`).

    python scripts/bench_turbo.py                                  # the CPU table of docs/benchmarks.md
    python scripts/bench_turbo.py --video 16x320x512 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import random_pipe, sync  # noqa: E402  (a sibling script)

from vcraft.loaders.checkpoints import load_state_dict  # noqa: E402
from vcraft.loaders.loading import attach, build_models  # noqa: E402
from vcraft.pipeline.api import TextToVideo  # noqa: E402

CASES = [("vc2-512", None, None), ("vc2-512", "unipc", 20), ("vc2-turbo", None, 4), ("vc2-turbo", None, 8),
         ("vc2-turbo-v2", None, 4), ("vc2-turbo-v2", None, 8)]


def random_lora_list(unet: torch.nn.Module, path: Path) -> None:
    """A T2V-Turbo v1 LoRA file of random pairs: `[up, down, ...]` for every layer in order, rank min(64, in, out)."""
    from vcraft.loaders.lora import ordered_layers

    tensors = []
    for _, layer in ordered_layers(unet):
        out, cin = layer.weight.shape[:2]
        rank = min(64, cin, out)
        tail = layer.weight.shape[2:]
        tensors += [torch.randn(out, rank, *[1] * len(tail)) * 1e-3, torch.randn(rank, cin, *tail) / cin ** 0.5]
    torch.save(tensors, path)


def load(name: str, device: torch.device, dtype: torch.dtype, scratch: Path) -> TextToVideo:
    """The preset with random weights; a Turbo one's own file written in its official layout and read back."""
    pipe = random_pipe(name, device, dtype)
    if name == "vc2-turbo":
        random_lora_list(pipe.unet, scratch / "unet_lora.pt")
        pipe.add_lora(scratch / "unet_lora.pt", removable=False)
    elif name == "vc2-turbo-v2":
        torch.save({k: v.float() for k, v in pipe.unet.state_dict().items()}, scratch / "unet_mg.pt")
        state = load_state_dict(scratch / "unet_mg.pt")
        attach(build_models(pipe.config.model), pipe.config.model, "unet", state, "unet_mg.pt")  # strict, on meta
        pipe.unet.load_state_dict(state)
    return pipe


def case(args: argparse.Namespace) -> dict:
    from vcraft.loaders.devices import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as scratch:
        pipe = load(args.case_model, device, dtype, Path(scratch))
    passes = []
    pipe.unet.register_forward_pre_hook(lambda m, a, kw: passes.append(kw["x"].shape[0]), with_kwargs=True)
    frames, height, width = map(int, args.video.split("x"))
    chosen = {k: v for k, v in (("sampler", args.case_sampler), ("steps", args.case_steps)) if v is not None}
    s = pipe.settings("a corgi surfing a wave", seed=0, frames=frames, height=height, width=width, **chosen)
    started = time.perf_counter()
    pipe(s)
    sync(device)
    return {"model": args.case_model, "sampler": s.sampler, "steps": s.steps, "guidance": s.guidance,
            "unet_calls": len(passes), "unet_passes": sum(passes), "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default="16x128x128", help="FRAMESxHEIGHTxWIDTH")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--case-model", help=argparse.SUPPRESS)
    parser.add_argument("--case-sampler", help=argparse.SUPPRESS)
    parser.add_argument("--case-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case_model:
        print(json.dumps(case(args)))
        return
    print(f"{args.video} (frames x height x width), {args.device}, {args.dtype}, random weights\n")
    print("| model | sampler | steps | UNet passes | seconds per video |")
    print("|---|---|---|---|---|")
    for model, sampler, steps in CASES:
        command = [sys.executable, __file__, "--video", args.video, "--device", args.device, "--dtype", args.dtype,
                   "--case-model", model, *(["--case-sampler", sampler] if sampler else []),
                   *(["--case-steps", str(steps)] if steps else [])]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['unet_passes']} | {r['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
