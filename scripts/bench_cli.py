"""Wall-clock cost of the command itself: `vcraft --help` start-up (against `python -c "import typer"` in the
same run, the floor of any Typer command), the embedded model's default generation, and a tiny end-to-end
generation through the official checkpoint layout.

    python scripts/bench_cli.py [--reference ../shared/reference] [--runs 3] [--busy]

`vcraft generate "a red circle moving left"` is what a fresh install runs (the shapes model, its default
16 frames of 64x64 and sampling settings). The tiny generation uses a random-weight fixture in the official
layout (8 frames, 64x128, 10 guided DDIM steps): start-up, loading, sampling, decoding and writing. `--busy` runs
a process that keeps one core busy beside every measurement (another render, a build), where a process that
splits its work over every core waits on the busy one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "reference")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="keep one core busy beside the measurements")
    args = parser.parse_args()
    if args.busy:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        measure(args)
    finally:
        if args.busy:
            busy.kill()


def measure(args: argparse.Namespace) -> None:
    vcraft = [sys.executable, "-m", "vcraft"]
    tiny = args.reference / "tiny" / "vc2_512"

    typer_times, help_times = [], []
    for _ in range(args.runs + 2):  # interleaved, so that both see the same machine
        typer_times.append(timed([sys.executable, "-c", "import typer"]))
        help_times.append(timed([*vcraft, "--help"]))
    gen_times, default_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.runs):
            default_times.append(timed([*vcraft, "generate", "a red circle moving left", "--seed", str(k),
                                        "-o", f"{tmp}/circle{k}.mp4"]))
            gen_times.append(timed([
                *vcraft, "generate", "a red fox running through snow", "--config", str(tiny / "config.yaml"),
                "--ckpt", str(tiny / "model.safetensors"), "--frames", "8", "--height", "64", "--width", "128",
                "--steps", "10", "--eta", "0", "--seed", str(k), "-o", f"{tmp}/{k}.mp4", "--device", "cpu",
            ]))
    print("| measurement | median of runs | runs (s) |")
    print("|---|---|---|")
    for name, values in (('`python -c "import typer"`', typer_times), ("`vcraft --help`", help_times),
                         ('`vcraft generate "a red circle moving left"` (embedded model, defaults)', default_times),
                         ("tiny generation (vc2_512 fixture, 8x64x128, 10 steps, MP4)", gen_times)):
        print(f"| {name} | {statistics.median(values):.2f} s | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\n`vcraft --help` / `import typer`: {statistics.median(help_times) / statistics.median(typer_times):.2f}x")


if __name__ == "__main__":
    main()
