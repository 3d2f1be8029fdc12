"""Would sampling several videos in one UNet call be faster, and would it change their pixels? The measurement
behind removing `--batch-size` (docs/benchmarks.md): one guided UNet call (both guidance halves) per video
against one call for n videos together, and how far the batched outputs are from the separate ones.

    python scripts/bench_batch.py [--model shapes] [--videos 1 3 8] [--runs 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vcraft import TextToVideo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--videos", type=int, nargs="+", default=[1, 3, 8])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    pipe = TextToVideo.from_pretrained(args.model, device=args.device, dtype="fp32")
    s = pipe.config.sampling
    f = pipe.autoencoder.downsample
    context = torch.cat([pipe.encode_prompts(["a red circle moving left"]), pipe.encode_prompts([""])])
    shape = (pipe.config.model.unet.in_channels, s.frames, s.height // f, s.width // f)
    gen = torch.Generator().manual_seed(0)

    def sync() -> None:
        if pipe.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(call) -> float:
        call()
        times = []
        for _ in range(args.runs):
            sync()
            start = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    print(f"{args.model} on {pipe.device}, one guided call = 2 UNet rows of {list(shape)}")
    print("| videos | separate calls (s) | one batched call (s) | speed-up | max abs difference |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        for n in args.videos:
            x = torch.randn((2 * n, *shape), generator=gen).to(pipe.device)
            t = torch.full((2 * n,), 500, device=pipe.device)
            ctx = context.repeat(n, 1, 1)
            fps = torch.full((2 * n,), s.fps, device=pipe.device)

            def separate():
                return torch.cat([pipe.unet(x[2 * i:2 * i + 2], t[:2], ctx[:2], fps[:2]) for i in range(n)])

            def batched():
                return pipe.unet(x, t, ctx, fps)

            one, many = timed(separate), timed(batched)
            diff = float((separate() - batched()).abs().max())
            print(f"| {n} | {one:.3f} | {many:.3f} | {one / many:.2f}x | {diff:.2e} |")


if __name__ == "__main__":
    main()
