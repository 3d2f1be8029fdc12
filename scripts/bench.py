"""Speed and memory of a full-size preset with random weights in the official layout (nothing to download).

    python scripts/bench.py                                   # vc2-512 on the CPU, fp32, the CPU shapes
    python scripts/bench.py --device cuda --dtype bf16 --json bench-h100.json

Reports, in one table: the matrix-multiply peak of this device and dtype (measured in the same run), one
guided UNet step (both guidance passes in one batch) with its GFLOP and the share of that peak, a whole
generation (text, DDIM steps, VAE decode), the VAE decode alone, loading the model from an fp16 safetensors
file, and peak memory (GPU: allocated by torch, per measurement; CPU: the process's peak resident set).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vcraft.api import TextToVideo, resolve_device, resolve_dtype
from vcraft.checkpoints import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, save_state_dict
from vcraft.config import load_preset
from vcraft.loading import build_models

PROMPT = "a corgi surfing a wave"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, runs: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of a large square matrix product, the ceiling the UNet step is compared with."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    runs = timed(lambda: a @ b, device, 10 if device.type == "cuda" else 3, warmup=2)
    return 2 * n ** 3 / statistics.median(runs) / 1e9


def random_pipe(name: str, device: torch.device, dtype: torch.dtype) -> TextToVideo:
    cfg = load_preset(name)
    torch.manual_seed(0)
    models = build_models(cfg.model, device)
    for module in (models.text_encoder, models.unet, models.autoencoder):
        module.to(dtype).eval().requires_grad_(False)
    return TextToVideo(cfg, models, device, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vc2-512")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--step-shape", default=None, help="frames x height x width of the UNet step "
                                                           "(default 8x256x256 on a CPU, 16x320x512 on a GPU)")
    parser.add_argument("--video", default="16x320x512", help="frames x height x width of the generation")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the whole generation")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["generate", "vae", "load"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    gpu = device.type == "cuda"
    step_shape = args.step_shape or ("16x320x512" if gpu else "8x256x256")
    sf, sh, sw = map(int, step_shape.split("x"))
    vf, vh, vw = map(int, args.video.split("x"))
    results: dict = {"model": args.model, "device": torch.cuda.get_device_name(device) if gpu else "cpu",
                     "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                     "torch": torch.__version__}
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    results["matmul_peak_gflops"] = round(matmul_peak(device, dtype), 1)
    log(f"matmul peak: {results['matmul_peak_gflops']} GFLOP/s")
    started = time.perf_counter()
    pipe = random_pipe(args.model, device, dtype)
    results["build_s"] = round(time.perf_counter() - started, 1)

    with torch.inference_mode():
        cond, uncond = pipe.encode_prompts([PROMPT]), pipe.encode_prompts([""])
        context = torch.cat([cond, uncond])
        f = pipe.autoencoder.downsample
        x = torch.randn(2, pipe.config.model.unet.in_channels, sf, sh // f, sw // f, device=device, dtype=dtype)
        t = torch.full((2,), 999, device=device)
        fps = torch.full((2,), pipe.config.sampling.fps, device=device)
        with FlopCounterMode(display=False) as counter:
            pipe.unet(x, t, context, fps)
        gflop = counter.get_total_flops() / 1e9
        reset_peak(device)
        step = statistics.median(timed(lambda: pipe.unet(x, t, context, fps), device, args.runs))
        results["guided_step"] = {"shape": step_shape, "gflop": round(gflop, 1), "seconds": round(step, 4),
                                  "gflops": round(gflop / step, 1),
                                  "share_of_peak": round(gflop / step / results["matmul_peak_gflops"], 3),
                                  "gpu_peak_gib": gpu_peak_gib(device)}
        log(f"guided step {step_shape}: {step:.3f} s, {gflop / step:.0f} GFLOP/s")

        if "generate" not in args.skip:
            s = pipe.config.sampling
            reset_peak(device)
            sync(device)
            started = time.perf_counter()
            latents = pipe.sample(cond, uncond, [0], vf, vh, vw, args.steps, s.guidance, 0.0, s.fps)
            frames = sum(chunk.shape[1] for chunk in pipe.decode(latents))
            sync(device)
            results["generate"] = {"video": args.video, "steps": args.steps, "frames": frames,
                                   "seconds": round(time.perf_counter() - started, 2),
                                   "gpu_peak_gib": gpu_peak_gib(device)}
            log(f"generation {args.video}, {args.steps} steps: {results['generate']['seconds']} s")
        if "vae" not in args.skip:
            z = torch.randn(1, 4, vf, vh // f, vw // f, device=device, dtype=dtype)
            reset_peak(device)
            decode = statistics.median(timed(lambda: [c for c in pipe.decode(z)], device, 1, warmup=0))
            results["vae_decode"] = {"frames": vf, "size": [vh, vw], "seconds": round(decode, 2),
                                     "gpu_peak_gib": gpu_peak_gib(device)}
            log(f"VAE decode of {vf} frames: {decode:.2f} s")

    if "load" not in args.skip:
        state = {**{UNET_PREFIX + k: v for k, v in pipe.unet.state_dict().items()},
                 **{TEXT_PREFIX + k: v for k, v in pipe.text_encoder.state_dict().items()},
                 **{VAE_PREFIX + k: v for k, v in pipe.autoencoder.vae.state_dict().items()}}
        cfg = pipe.config
        del pipe
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.safetensors"
            save_state_dict({k: v.cpu() for k, v in state.items()}, path, "fp16")
            del state
            size = path.stat().st_size
            reset_peak(device)
            started = time.perf_counter()
            TextToVideo.from_config(cfg, path, str(device), args.dtype)
            sync(device)
            results["load"] = {"file_gib": round(size / 2**30, 2), "seconds": round(time.perf_counter() - started, 2),
                               "gpu_peak_gib": gpu_peak_gib(device)}
            log(f"load from fp16 safetensors ({size / 2**30:.2f} GiB): {results['load']['seconds']} s")
    results["process_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)

    print("| measurement | value |")
    print("|---|---|")
    for key, value in results.items():
        print(f"| {key} | {json.dumps(value) if isinstance(value, dict) else value} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
