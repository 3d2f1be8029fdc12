"""The `vcraft` command: parses and validates, then calls the Python API. No model logic lives here.

Contract (../shared/DESIGN.md): results on stdout, messages on stderr, one-line `error: ...` messages,
exit codes 0 ok, 1 failed at run time, 2 bad input (found before any heavy work), 130 interrupted.
torch and the models are imported inside the commands, so `vcraft --help` stays fast.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from dataclasses import asdict, replace
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import TyperException

from vcraft import __version__
from vcraft.config import DEFAULT_PRESET, Config, apply_overrides, load_config, load_preset, validate_sampling
from vcraft.errors import VcraftError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Text-to-video generation with VideoCrafter-compatible models.")


class Format(str, Enum):
    mp4 = "mp4"
    gif = "gif"
    png = "png"


def _log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "video"


def _resolve_config(model: Optional[str], config: Optional[Path], overrides: list[str]) -> Config:
    if model and config:
        raise VcraftError("give either --model or --config, not both")
    if config is not None:
        return load_config(config, overrides)
    return apply_overrides(load_preset(model or DEFAULT_PRESET), overrides)


def _output_paths(output: Optional[Path], fmt: str, names: list[str], overwrite: bool) -> list[Path]:
    """One path per video. `-o` names the file (or PNG folder) of a single video when it has the format's
    extension (any name, for PNG folders); otherwise it is a directory for the videos."""
    suffix = "" if fmt == "png" else f".{fmt}"
    if output is not None and fmt != "png" and output.suffix.lower() not in ("", suffix) and not output.is_dir():
        raise VcraftError(f"-o {output}: the extension does not match --format {fmt}; use {suffix} or a folder")
    single = output is not None and len(names) == 1 and (fmt == "png" or output.suffix.lower() == suffix)
    if single:
        paths = [output]
    else:
        folder = output if output is not None else Path("outputs")
        if folder.exists() and not folder.is_dir():
            raise VcraftError(f"{folder} is a file; with several videos -o must be a directory")
        paths = [folder / f"{name}{suffix}" for name in names]
    for path in paths:
        taken = path.exists() and not (path.is_dir() and not any(path.iterdir()))
        if taken and not overwrite:
            raise VcraftError(f"{path} already exists; use --overwrite to replace it")
        if path.is_dir() and fmt != "png":
            raise VcraftError(f"{path} is a directory; give a file name ending in .{fmt}")
    return paths


@app.command()
def generate(
    prompts: list[str] = typer.Argument(..., help="One or more prompts; video k gets seed base+k."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"Preset name (default {DEFAULT_PRESET})."),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="vcraft YAML or original VideoCrafter inference YAML."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (.ckpt or .safetensors)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="File (or PNG folder) for one video, else a directory."),
    frames: Optional[int] = typer.Option(None, help="Number of frames."),
    height: Optional[int] = typer.Option(None, help="Height in pixels."),
    width: Optional[int] = typer.Option(None, help="Width in pixels."),
    fps: Optional[int] = typer.Option(None, help="Motion-rate conditioning the model sees."),
    save_fps: Optional[int] = typer.Option(None, "--save-fps", help="Playback rate written to the file."),
    steps: Optional[int] = typer.Option(None, help="DDIM steps."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (1 = off)."),
    negative: Optional[str] = typer.Option(None, help="Negative prompt (default: the empty prompt)."),
    eta: Optional[float] = typer.Option(None, help="DDIM eta (0 = deterministic)."),
    seed: Optional[int] = typer.Option(None, min=0, help="Base seed (default: random, reported)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", help="auto, fp32, fp16 or bf16."),
    fmt: Optional[Format] = typer.Option(None, "--format", help="mp4 (default), gif or png frames."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value: key=value."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or messages on stderr."),
    verbose: bool = typer.Option(False, "--verbose", help="Tracebacks with errors (read by main)."),
) -> None:
    """Generate videos from text prompts."""
    cfg = _resolve_config(model, config, overrides)
    chosen = {"frames": frames, "height": height, "width": width, "fps": fps, "save_fps": save_fps,
              "steps": steps, "guidance": guidance, "eta": eta}
    settings = replace(cfg.sampling, **{k: v for k, v in chosen.items() if v is not None})
    validate_sampling(settings, cfg.model)
    if any(not p.strip() for p in prompts):
        raise VcraftError("a prompt is empty; give some text to turn into a video")
    if fmt is None:
        suffix = output.suffix.lstrip(".").lower() if output is not None else ""
        fmt = Format(suffix) if suffix in Format.__members__ else Format.mp4
    base_seed = seed if seed is not None else secrets.randbelow(2**31)
    seeds = [base_seed + k for k in range(len(prompts))]
    names = [f"{k:04d}-{_slug(p)}-{s}" for k, (p, s) in enumerate(zip(prompts, seeds, strict=True))]
    paths = _output_paths(output, fmt.value, names, overwrite)
    if ckpt is not None and not ckpt.is_file():
        raise VcraftError(f"checkpoint not found: {ckpt}")

    if seed is None:
        _log(f"seed: {base_seed} (random; pass --seed {base_seed} to repeat)", quiet)

    from vcraft.api import TextToVideo, find_checkpoint
    from vcraft.video import write_video

    ckpt_path = ckpt or find_checkpoint(cfg)
    started = time.perf_counter()
    pipe = TextToVideo.from_config(cfg, ckpt_path, device, dtype)
    _log(f"loaded {cfg.name} from {ckpt_path} on {pipe.device} ({str(pipe.dtype).removeprefix('torch.')}) "
         f"in {time.perf_counter() - started:.1f} s", quiet)
    for k, (prompt, video_seed, path) in enumerate(zip(prompts, seeds, paths, strict=True)):
        t0 = time.perf_counter()
        bar = _progress(quiet, f"[{k + 1}/{len(prompts)}]")
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "prompt": prompt, "negative": negative, "seed": video_seed, "model": cfg.name,
            "config": str(config.resolve()) if config else None, "ckpt": str(Path(ckpt_path).resolve()),
            "format": fmt.value,
            **asdict(settings), "overrides": list(overrides), "device": str(pipe.device),
            "dtype": str(pipe.dtype).removeprefix("torch."), "vcraft_version": __version__,
        }
        try:
            write_video(path, pipe.stream(prompt, settings, video_seed, negative, bar), fmt.value,
                        settings.save_fps, metadata)
        finally:
            bar(None, None)
        _log(f"[{k + 1}/{len(prompts)}] {prompt!r} seed {video_seed}: {time.perf_counter() - t0:.1f} s", quiet)
        print(path, flush=True)


def _progress(quiet: bool, label: str):
    """A callback(step, total) drawing a bar over the denoising steps, on a terminal only;
    callback(None, None) closes it."""
    if quiet or not sys.stderr.isatty():
        return lambda step, total: None
    from tqdm import tqdm

    state: dict = {}

    def update(step, total):
        if step is None:
            if "bar" in state:
                state["bar"].close()
            return
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=label, unit="step", file=sys.stderr, leave=False)
        state["bar"].update(step - state["bar"].n)

    return update


@app.command()
def convert(
    source: Path = typer.Argument(..., help="Official .ckpt (or .safetensors)."),
    target: Path = typer.Argument(..., help="Output .safetensors."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16 for the weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    verbose: bool = typer.Option(False, "--verbose", help="Tracebacks with errors."),
) -> None:
    """Convert a checkpoint to safetensors once, so later loads are fast and run no pickle code."""
    from vcraft.checkpoints import DTYPES, load_state_dict, save_state_dict, split_state_dict
    from vcraft.loading import identify_preset

    if dtype not in DTYPES:
        raise VcraftError(f"unknown dtype '{dtype}'; use fp32, fp16 or bf16")
    if target.suffix != ".safetensors":
        raise VcraftError(f"the output must end in .safetensors, got {target.name}")
    if target.exists() and not overwrite:
        raise VcraftError(f"{target} already exists; use --overwrite to replace it")
    state = load_state_dict(source)
    split_state_dict(state, str(source))
    preset = identify_preset(state)
    save_state_dict(state, target, dtype, {"format": "vcraft", "preset": preset or "unknown"})
    print(target)


@app.command()
def info(
    ckpt: Path = typer.Argument(..., help="Checkpoint (.ckpt or .safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of lines."),
    verbose: bool = typer.Option(False, "--verbose", help="Tracebacks with errors."),
) -> None:
    """Say which preset a checkpoint matches, its dtype and parameter counts."""
    from vcraft.checkpoints import SCHEDULE_KEYS, load_state_dict, split_state_dict
    from vcraft.loading import identify_preset

    state = load_state_dict(ckpt)
    parts = split_state_dict(state, str(ckpt))
    weights = [v for k, v in state.items() if k not in SCHEDULE_KEYS]
    facts = {
        "file": str(ckpt),
        "preset": identify_preset(state) or "none (no preset fits; use --config with its YAML)",
        "dtype": ", ".join(sorted({str(v.dtype).removeprefix("torch.") for v in weights})),
        "unet_parameters": sum(v.numel() for v in parts.unet.values()),
        "autoencoder_parameters": sum(v.numel() for v in parts.vae.values()),
        "text_encoder_parameters": sum(v.numel() for v in parts.text.values()),
        "total_parameters": sum(v.numel() for v in weights),
        "keys": len(state),
    }
    if as_json:
        print(json.dumps(facts))
    else:
        for key, value in facts.items():
            print(f"{key}: {value:,}" if isinstance(value, int) else f"{key}: {value}")


@app.command()
def train(
    config: Path = typer.Argument(..., help="A vcraft YAML with a train section, e.g. configs/shapes.yaml."),
    output: Path = typer.Option(Path("runs/shapes"), "--output", "-o",
                                help="Run folder: checkpoints, log, and the trained model."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value: key=value."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No messages on stderr."),
    verbose: bool = typer.Option(False, "--verbose", help="Tracebacks with errors."),
) -> None:
    """Train a model from scratch on the synthetic shapes data (autoencoder, then diffusion).

    Resumable: run the same command again to continue from the last checkpoint in the run folder."""
    cfg = load_config(config, overrides)
    if cfg.train is None:
        raise VcraftError(f"{config} has no train section")
    from vcraft.training import train as run_training

    started = time.perf_counter()
    model_path = run_training(cfg, output, lambda line: _log(line, quiet))
    _log(f"trained in {(time.perf_counter() - started) / 60:.1f} min; generate with: vcraft generate PROMPT "
         f"--config {output / 'config.yaml'} --ckpt {model_path}", quiet)
    print(model_path, flush=True)


@app.command()
def presets() -> None:
    """List the model presets."""
    from vcraft.config import preset_names

    for name in preset_names():
        cfg = load_preset(name)
        s = cfg.sampling
        print(f"{name}\t{s.height}x{s.width}x{s.frames}\t{cfg.weights_url or ''}")


def main() -> None:
    verbose = "--verbose" in sys.argv
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into exit code 130 itself
            code = _fail("interrupted", 130)
    except (KeyboardInterrupt, typer.Abort):
        code = _fail("interrupted", 130)
    except TyperException as exc:  # the parser's own errors: unknown option, bad value, ...
        code = _fail(exc.format_message(), getattr(exc, "exit_code", 2))
    except VcraftError as exc:
        code = _fail(str(exc), 2, verbose)
    except Exception as exc:  # a failure at run time: one line, the traceback only on request
        code = _fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 1, verbose)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, verbose: bool = False) -> int:
    if verbose:
        import traceback

        traceback.print_exc()
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code
