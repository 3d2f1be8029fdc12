"""Speed and memory of a full-size preset with random weights in the official layout (nothing to download).

    python scripts/bench.py                                   # vc2-512 on the CPU, fp32, the CPU shapes
    python scripts/bench.py --device cuda --dtype bf16 --json bench-h100.json
    python scripts/bench.py --device cuda --dtype bf16 --compile --skip vae load   # torch.compile of the UNet
    python scripts/bench.py --device cuda --dtype bf16 --offload                    # --offload model
    python scripts/bench.py --model vc0-256-depth --video 16x256x256 --steps 1 --skip step vae load   # control

Reports, in one table: the matrix-multiply peak of this device and dtype (measured in the same run), one
guided UNet step (both guidance passes in one batch) with its GFLOP and the share of that peak, a whole
generation (text, DDIM steps, VAE decode; after the same generation as a warm-up), the VAE decode alone,
loading the model from an fp16 safetensors file, and peak memory: allocated by torch on a GPU; on a CPU the
peak resident set, each measurement running in a process of its own (with the resident set of the libraries
before it started, for reference).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vcraft.config import load_preset
from vcraft.loaders.checkpoints import save_state_dict
from vcraft.loaders.components import official_layout
from vcraft.loaders.devices import resolve_device, resolve_dtype
from vcraft.loaders.loading import build_models, ready_for_inference
from vcraft.models.autoencoder import VideoAutoencoder
from vcraft.pipeline.api import TextToVideo
from vcraft.pipeline.frames import frames_to_uint8

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


def random_pipe(name: str, device: torch.device, dtype: torch.dtype, offload: bool = False,
                compile_unet: bool = False, encoder: bool = False) -> TextToVideo:
    cfg = load_preset(name)
    torch.manual_seed(0)
    home = torch.device("cpu") if offload else device  # as from_config places them
    models = build_models(cfg.model, home, encoder)
    for module in models.modules():
        module.to(dtype)
    pipe = TextToVideo(cfg, ready_for_inference(models, home), device, dtype, offload)
    return pipe.compile() if compile_unet else pipe


def shape(text: str) -> tuple[int, int, int]:
    frames, height, width = map(int, text.split("x"))
    return frames, height, width


def peak_rss_gib() -> float:
    """This process's peak resident set. On Linux its VmHWM: ru_maxrss would start from the parent's (the
    started process inherits its resident-set peak), which hid child peaks below the parent's."""
    status = Path("/proc/self/status")
    if status.is_file():
        kib = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    else:  # ru_maxrss is in KiB on Linux, bytes on macOS
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return round(kib / 2**20, 2)


@torch.inference_mode()
def guided_step(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    pipe = random_pipe(args.model, device, dtype, args.offload, args.compile)
    sf, sh, sw = shape(args.step_shape)
    context = torch.cat([pipe.encode_prompts([PROMPT]), pipe.encode_prompts([""])])
    f = pipe.autoencoder.downsample
    x = torch.randn(2, pipe.config.model.unet.in_channels, sf, sh // f, sw // f, device=device, dtype=dtype)
    t = torch.full((2,), 999, device=device)
    fps = torch.full((2,), pipe.config.sampling.fps, device=device)
    reset_peak(device)
    step = statistics.median(timed(lambda: pipe.unet(x, t, context, fps), device, args.runs))
    # Counted after timing: a first call under the counter's dispatch mode would keep --compile from compiling.
    from torch.utils.flop_counter import FlopCounterMode  # not at the top: 0.08 GiB resident in every child

    with FlopCounterMode(display=False) as counter:
        pipe.unet(x, t, context, fps)
    gflop = counter.get_total_flops() / 1e9
    return {"shape": args.step_shape, "gflop": round(gflop, 1), "seconds": round(step, 4),
            "gflops": round(gflop / step, 1), "gpu_peak_gib": gpu_peak_gib(device)}


@torch.inference_mode()
def generate(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    pipe = random_pipe(args.model, device, dtype, args.offload, args.compile)
    vf, vh, vw = shape(args.video)
    # A model with a control adapter follows a control video (its depth estimated, for vc0-256-depth): a bright
    # square crossing a dark frame.
    control = np.zeros((vf, vh, vw, 3), dtype=np.uint8)
    for i in range(vf):
        left = i * (vw - vw // 4) // max(vf - 1, 1)
        control[i, vh // 3:vh // 3 + vh // 4, left:left + vw // 4] = 230
    given = {"control_video": control} if pipe.adapter is not None else {}
    settings = pipe.settings(PROMPT, frames=vf, height=vh, width=vw, steps=args.steps, eta=0.0, **given)

    def run() -> float:
        sync(device)
        started = time.perf_counter()
        assert sum(chunk.shape[0] for chunk in pipe.stream(settings)) == vf
        sync(device)
        return time.perf_counter() - started

    # The same generation once first, as a long-running process would have done: kernel selection and, with
    # --compile, compilation stay out of the timed run (the warm-up's seconds are reported). A whole one, since
    # a shorter run can miss passes: with a guidance interval, the guided or the unguided steps.
    warmup = run()
    reset_peak(device)
    return {"video": args.video, "steps": args.steps, "seconds": round(run(), 2),
            "warmup_seconds": round(warmup, 2), "gpu_peak_gib": gpu_peak_gib(device)}


@torch.inference_mode()
def vae_decode(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """The autoencoder alone, as the reference measured it: its weights (those that decoding uses, as a
    pipeline loads them) and one video's decode."""
    cfg = load_preset(args.model).model
    torch.manual_seed(0)
    with torch.device(device):
        vae = VideoAutoencoder(cfg.autoencoder, cfg.scale_factor, encoder=False).to(dtype)
    vae.eval().to(memory_format=torch.channels_last)  # as ready_for_inference leaves it
    built = peak_rss_gib()
    vf, vh, vw = shape(args.video)
    z = torch.randn(1, cfg.autoencoder.embed_dim, vf, vh // vae.downsample, vw // vae.downsample, device=device,
                    dtype=dtype)
    reset_peak(device)
    decode = statistics.median(timed(lambda: [frames_to_uint8(c).cpu() for c in vae.decode_chunks(z)], device, 1,
                                     warmup=0))
    return {"frames": vf, "size": [vh, vw], "seconds": round(decode, 2), "gpu_peak_gib": gpu_peak_gib(device),
            "rss_built_gib": built}


def save_random(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    pipe = random_pipe(args.model, torch.device("cpu"), torch.float32, encoder=True)  # a whole checkpoint
    models = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "autoencoder": pipe.autoencoder}
    save_state_dict(official_layout({name: m.state_dict() for name, m in models.items()}), args.file, "fp16")
    return {}


def load(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    reset_peak(device)
    started = time.perf_counter()
    pipe = TextToVideo.from_config(load_preset(args.model), args.file, str(device), args.dtype)
    sync(device)
    weights = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.text_encoder, pipe.autoencoder)
                  for p in m.parameters())
    return {"file_gib": round(args.file.stat().st_size / 2**30, 2), "weights_gib": round(weights / 2**30, 2),
            "seconds": round(time.perf_counter() - started, 2), "gpu_peak_gib": gpu_peak_gib(device)}


MEASUREMENTS = {"step": guided_step, "generate": generate, "vae": vae_decode, "save": save_random, "load": load}


def in_child(what: str, argv: list[str], file: Path) -> dict:
    """One measurement in a fresh process, so its peak resident memory is its own."""
    done = subprocess.run([sys.executable, __file__, *argv, "--child", what, "--file", str(file)],
                          stdout=subprocess.PIPE, check=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


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
    parser.add_argument("--offload", action="store_true", help="as --offload model: each stage on the device "
                                                               "only while it runs (generation only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (compiled during the "
                                                               "warm-up)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["step", "generate", "vae", "load"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=list(MEASUREMENTS), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    gpu = device.type == "cuda"
    args.step_shape = args.step_shape or ("16x320x512" if gpu else "8x256x256")
    if args.offload:  # it changes where the weights wait between stages, so only the whole generation
        args.skip = sorted({*args.skip, "step", "vae", "load"})
    if args.child:
        before = peak_rss_gib()  # the interpreter, torch and the libraries
        result = MEASUREMENTS[args.child](args, device, dtype)
        print(json.dumps({**result, "rss_before_gib": before, "peak_rss_gib": peak_rss_gib()}))
        return

    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    results: dict = {"model": args.model, "device": torch.cuda.get_device_name(device) if gpu else "cpu",
                     "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "offload": args.offload, "compile": args.compile}
    results["matmul_peak_gflops"] = round(matmul_peak(device, dtype), 1)
    log(f"matmul peak: {results['matmul_peak_gflops']} GFLOP/s")
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "model.safetensors"
        for what, name in (("step", "guided_step"), ("generate", "generate"), ("vae", "vae_decode"),
                           ("load", "load")):
            if what in args.skip:
                continue
            if what == "load":
                in_child("save", argv, file)
            results[name] = in_child(what, argv, file)
            log(f"{name}: {json.dumps(results[name])}")
    if "guided_step" in results:
        results["guided_step"]["share_of_peak"] = round(
            results["guided_step"]["gflops"] / results["matmul_peak_gflops"], 3)

    print("| measurement | value |")
    print("|---|---|")
    for key, value in results.items():
        print(f"| {key} | {json.dumps(value) if isinstance(value, dict) else value} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
