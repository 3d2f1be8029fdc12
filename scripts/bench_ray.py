"""Throughput of `vcraft generate --ray` on this machine: the same batch of the embedded model (its defaults)
rendered by one Ray worker of N threads, by N workers of one thread, and by a plain local run for comparison.

    python scripts/bench_ray.py [--videos 16] [--cpus 2]

Each configuration is one whole command (Ray's start and the workers' model loading included) on a Ray instance
of its own (`--ray local`); videos per minute are counted over the command and over the videos after the first
`cpus` finished (the steady rate, read from when the driver reported each video).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
           "a yellow circle growing"]


def timed_run(args: list[str], videos: int, cpus: int) -> tuple[float, float]:
    """Whole-command seconds, and the steady rate in videos per minute."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "vcraft", "generate", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env)
    finished = [time.perf_counter() - start for _ in process.stdout]
    if process.wait() != 0 or len(finished) != videos:
        raise SystemExit(f"vcraft failed: {' '.join(args)}")
    total = time.perf_counter() - start
    steady = (videos - cpus) / (finished[-1] - finished[cpus - 1]) * 60
    return total, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs to use (threads, workers)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n")
        batch = ["-f", str(prompts), "--samples", str(args.videos // len(PROMPTS)), "--seed", "0", "-q"]
        runs = {
            f"local run, {args.cpus} threads": [],
            f"--ray local --workers 1 --cpus-per-worker {args.cpus}": ["--ray", "local", "--workers", "1",
                                                                       "--cpus-per-worker", str(args.cpus)],
            f"--ray local --workers {args.cpus} --cpus-per-worker 1": ["--ray", "local", "--workers",
                                                                       str(args.cpus), "--cpus-per-worker", "1"],
        }
        print(f"{args.videos} videos (the embedded model's defaults)\n")
        print("| configuration | whole command | videos / min, whole | videos / min, steady |")
        print("|---|---|---|---|")
        for k, (name, extra) in enumerate(runs.items()):
            total, steady = timed_run([*batch, *extra, "-o", f"{tmp}/out{k}"], args.videos, args.cpus)
            print(f"| {name} | {total:.1f} s | {args.videos / total * 60:.1f} | {steady:.1f} |", flush=True)


if __name__ == "__main__":
    main()
