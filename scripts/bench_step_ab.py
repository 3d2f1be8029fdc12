"""One guided UNet step of this checkout against another checkout's, in one process, turn by turn (each going
first in every other pair: the second of a pair tends to run faster), with the same random weights: a
before-and-after that the machine's drift between processes cannot tilt.

    git worktree add ../before <commit>
    python scripts/bench_step_ab.py --against ../before [--model vc2-512] [--shape 8x256x256] [--runs 4]

The other checkout's `models/attention.py` and `models/unet3d.py` are loaded under other names (its UNet then uses
its own attention); both UNets get the same state dict, and their outputs are compared bit for bit.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

import vcraft.models.unet3d as ours
from vcraft.config import load_preset


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def their_unet_module(checkout: Path):
    """The other checkout's unet3d, importing that checkout's attention module."""
    models = checkout / "src" / "vcraft" / "models"
    ours_attention = sys.modules["vcraft.models.attention"]
    sys.modules["vcraft.models.attention"] = _module("theirs_attention", models / "attention.py")
    try:
        return _module("theirs_unet3d", models / "unet3d.py")
    finally:
        sys.modules["vcraft.models.attention"] = ours_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, help="the other checkout (a git worktree)")
    parser.add_argument("--model", default="vc2-512")
    parser.add_argument("--shape", default="8x256x256", help="frames x height x width")
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    cfg = load_preset(args.model).model
    frames, height, width = map(int, args.shape.split("x"))
    f = 2 ** (len(cfg.autoencoder.ch_mult) - 1)
    torch.manual_seed(0)
    nets = {"this checkout": ours.UNet3D(cfg.unet).eval(), "other": their_unet_module(args.against).UNet3D(cfg.unet)}
    nets["other"].load_state_dict(nets["this checkout"].state_dict())
    nets["other"].eval()
    x = torch.randn(2, cfg.unet.in_channels, frames, height // f, width // f)
    t, fps = torch.full((2,), 999), torch.full((2,), 28)
    context = torch.randn(2, 77, cfg.unet.context_dim)
    times: dict[str, list[float]] = {name: [] for name in nets}
    with torch.inference_mode():
        same = torch.equal(*(net(x, t, context, fps) for net in nets.values()))
        for run in range(args.runs):  # the two in turn, the first of each pair alternating (ABBA...)
            for name, net in (list(nets.items()) if run % 2 == 0 else list(nets.items())[::-1]):
                started = time.perf_counter()
                net(x, t, context, fps)
                times[name].append(time.perf_counter() - started)
    for name, runs in times.items():
        print(f"{name}: median {statistics.median(runs):.3f} s, runs {', '.join(f'{r:.3f}' for r in runs)}")
    ratio = statistics.median(times["this checkout"]) / statistics.median(times["other"])
    print(f"this / other: {ratio:.3f}; outputs bit-identical: {same}; threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
