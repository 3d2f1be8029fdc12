"""Peak resident memory and time of long videos: the same `vcraft generate` command at several lengths,
each in its own process, so that every peak is measured from a clean start.

    python scripts/bench_long.py                                  # shapes model, 32 and 256 frames
    python scripts/bench_long.py --frames 32 128 512 -- --config X.yaml --ckpt X.safetensors --height 64

Arguments after `--` go to `vcraft generate` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def run(frames: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "vcraft", "generate", "a red circle moving left", "--seed", "0",
                   "--frames", str(frames), "-q", "-o", os.path.join(folder, "video.mp4"), *extra]
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        if status != 0:
            raise SystemExit(f"error: {' '.join(command)} failed: {proc.stderr.read().strip()}")
    return {"frames": frames, "seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    rows = [run(n, extra) for n in args.frames]
    base = rows[0]["peak_rss_mib"]
    for row in rows:
        row["vs_first"] = round(row["peak_rss_mib"] / base, 3)
    if args.json:
        print(json.dumps(rows))
        return
    print("| frames | seconds | peak resident MiB | vs first |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['frames']} | {r['seconds']} | {r['peak_rss_mib']} | {r['vs_first']}x |")


if __name__ == "__main__":
    main()
