"""The `vcraft` command: parses and validates, then calls the Python API. No model logic lives here.

Contract (../shared/DESIGN.md): results on stdout, messages on stderr, one-line `error: ...` messages,
exit codes 0 ok, 1 failed at run time, 2 bad input (found before any heavy work), 130 interrupted.
torch and the models are imported inside the commands, so `vcraft --help` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import threading
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import TyperException

from vcraft import DEFAULT_PRESET
from vcraft.errors import VcraftError, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Text-to-video generation with VideoCrafter-compatible models.")


class Format(str, Enum):
    mp4 = "mp4"
    gif = "gif"
    png = "png"


def _log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _resolve_config(model: Optional[str], config: Optional[Path], overrides: list[str]):
    from vcraft.config import apply_overrides, load_config, load_preset

    if model and config:
        raise VcraftError("give either --model or --config, not both")
    if config is not None:
        return load_config(config, overrides)
    return apply_overrides(load_preset(model or DEFAULT_PRESET), overrides)


def _recipe(path: Path) -> dict:
    """The settings a video was made with, from its JSON sidecar (for --from)."""
    from vcraft.pipeline.settings import INPUT_FILES, TYPES, check_type

    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VcraftError(f"--from: file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VcraftError(f"--from {path}: not a vcraft JSON sidecar ({exc})") from None
    # Older sidecars may lack or null the negative; only some name input files.
    needed = ("model", *(k for k in TYPES if k not in ("negative", *INPUT_FILES)))
    if isinstance(recipe, dict):
        recipe.setdefault("guidance_min_t", 0)  # sidecars from before the setting existed: guided throughout
        recipe.setdefault("sampler", "ddim")
    if not isinstance(recipe, dict) or any(k not in recipe for k in needed):
        raise VcraftError(f"--from {path}: not a vcraft JSON sidecar (it needs {', '.join(needed)})")
    try:  # a number before it is counted on from (batch.plan); make_settings checks the rest
        recipe["seed"] = check_type("seed", recipe["seed"])
        for key in INPUT_FILES:
            if recipe.get(key) is not None:
                recipe[key] = _same_input(key, recipe[key], recipe.get(f"{key}_sha256"))
    except VcraftError as exc:
        raise VcraftError(f"--from {path}: {exc}") from None
    return recipe


def _same_input(key: str, source: str, sha256: Optional[str]):
    """The input file (picture, video) a sidecar names, as long as it is the one the video was made from."""
    from vcraft.pipeline.settings import check_type

    if source == "array":
        raise VcraftError(f"its {key!r} was given in Python as pixels, not as a file; it cannot be read again")
    given = check_type(key, source)
    if sha256 is not None and given.sha256 != sha256:
        raise VcraftError(f"{source} has changed since the video was made (another sha256)")
    return given


@app.command()
def generate(
    prompts: Optional[list[str]] = typer.Argument(None, help="Prompts; - reads them from stdin, one a line."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts-file", "-f",
                                                help="A .txt, .jsonl or .csv file of prompts (and settings)."),
    from_json: Optional[Path] = typer.Option(None, "--from", help="Make again the video of this JSON sidecar."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"Preset name (default {DEFAULT_PRESET})."),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="vcraft YAML or original VideoCrafter inference YAML."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (.ckpt or .safetensors)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="File (or PNG folder) for one video, - for stdout, else a folder."),
    name: Optional[str] = typer.Option(None, "--name", help="File name template: {index} {slug} {seed} {sample} "
                                                            "{prompt} (default {index:04d}-{slug}-{seed})."),
    frames: Optional[int] = typer.Option(None, help="Number of frames."),
    height: Optional[int] = typer.Option(None, help="Height in pixels."),
    width: Optional[int] = typer.Option(None, help="Width in pixels."),
    fps: Optional[int] = typer.Option(None, help="Motion-rate conditioning the model sees."),
    save_fps: Optional[int] = typer.Option(None, "--save-fps", help="Playback rate written to the file."),
    steps: Optional[int] = typer.Option(None, help="DDIM steps."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (1 = off)."),
    guidance_min_t: Optional[int] = typer.Option(None, "--guidance-min-t", help="Guidance only at timesteps "
                                                 "at or above this (0-1000; 0 = every step, as VideoCrafter)."),
    negative: Optional[str] = typer.Option(None, help="Negative prompt (default: the empty prompt)."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image-to-video models: the picture the video "
                                                               "starts from and follows."),
    continues: Optional[Path] = typer.Option(None, "--continue", help="Continue this video (MP4, GIF or a PNG "
                                             "folder) by --frames new frames; the output holds both."),
    sampler: Optional[str] = typer.Option(None, help="ddim, dpmpp-2m, dpmpp-2m-sde or unipc (default: the "
                                                      "model's)."),
    eta: Optional[float] = typer.Option(None, help="Noise a step: DDIM's eta, or dpmpp-2m-sde's share (0 = "
                                                   "deterministic); dpmpp-2m and unipc use none."),
    overlap: Optional[int] = typer.Option(None, help="Long videos: latent frames each window keeps from the "
                                                     "one before (default: the config's, else a quarter of the "
                                                     "model's clip)."),
    extend: Optional[str] = typer.Option(None, help="Long videos: mask (models trained to continue) or "
                                                    "replace (any model). Default: per model."),
    seed: Optional[int] = typer.Option(None, min=0, help="Base seed (default: random, reported)."),
    samples: int = typer.Option(1, help="Videos per prompt."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", help="auto, fp32, fp16 or bf16."),
    offload: str = typer.Option("none", help="none, or model: each stage (text encoder, UNet, autoencoder) "
                                             "on the device only while it runs, for small GPUs."),
    compile_unet: bool = typer.Option(False, "--compile", help="Compile the UNet (torch.compile): the first "
                                                              "step takes a minute or more, later ones run "
                                                              "faster; for long runs on a GPU."),
    fmt: Optional[Format] = typer.Option(None, "--format", help="mp4 (default), gif or png frames."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value: key=value."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Keep existing outputs; make the rest."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per finished video on stdout."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Render on Ray workers: auto (RAY_ADDRESS or a running "
                                                         "cluster), a cluster's address, or local (a Ray "
                                                         "instance for this run). Needs vcraft[ray]."),
    workers: Optional[int] = typer.Option(None, "--workers", help="--ray: workers, each loading the model once "
                                                                  "(default: as many as the cluster holds)."),
    cpus_per_worker: int = typer.Option(1, "--cpus-per-worker", help="--ray: CPUs (and torch threads) a worker."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", help="--ray: GPUs a worker "
                                                    "(default: 1 where the cluster has GPUs, else 0)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or messages on stderr."),
    verbose: bool = typer.Option(False, "--verbose", help="Tracebacks with errors (read by main)."),
) -> None:
    """Generate videos from text prompts, prompt files or stdin."""
    from vcraft.app.batch import STDOUT, plan
    from vcraft.app.prompts import PromptRow, gather_prompts
    from vcraft.pipeline.inputs import read_footage, read_picture

    chosen = {"frames": frames, "height": height, "width": width, "fps": fps, "save_fps": save_fps,
              "steps": steps, "guidance": guidance, "guidance_min_t": guidance_min_t, "eta": eta,
              "sampler": sampler, "overlap": overlap, "extend": extend, "negative": negative,
              # input files read once for the whole run
              "image": None if image is None else read_picture(image),
              "continues": None if continues is None else read_footage(continues)}
    if from_json is not None:
        if prompts or prompts_file or model or config:
            raise VcraftError("--from makes the video its JSON file describes; give no prompts, --model or --config")
        recipe = _recipe(from_json)
        config = Path(recipe["config"]) if recipe.get("config") else None
        model = None if config else recipe["model"]
        ckpt = ckpt or (Path(recipe["ckpt"]) if recipe.get("ckpt") else None)
        overrides = [*recipe.get("overrides", []), *overrides]
        chosen = {**{k: recipe.get(k) for k in chosen}, **{k: v for k, v in chosen.items() if v is not None}}
        rows = [PromptRow(recipe["prompt"], {"seed": recipe["seed"] if seed is None else seed}, str(from_json))]
        fmt = fmt or Format(recipe.get("format", "mp4"))
    cfg = _resolve_config(model, config, overrides)
    if from_json is None:
        rows = gather_prompts(prompts or [], prompts_file, sys.stdin)
    if fmt is None:
        suffix = output.suffix.lstrip(".").lower() if output is not None else ""
        fmt = Format(suffix) if suffix in Format.__members__ else Format.mp4
    base_seed = seed if seed is not None else secrets.randbelow(2**31)
    videos = plan(rows, cfg, chosen, base_seed, samples, name, output, fmt.value, overwrite, skip_existing)
    if ckpt is not None and not ckpt.is_file():
        raise VcraftError(f"checkpoint not found: {ckpt}")
    todo = [v for v in videos if not (skip_existing and v.path != STDOUT and v.path.exists())]
    if len(todo) < len(videos):
        _log(f"skipping {len(videos) - len(todo)} video(s) whose output exists", quiet)
    if not todo:
        return

    from vcraft.app.render import Job
    from vcraft.loaders.devices import resolve_device, resolve_dtype
    from vcraft.loaders.weights import find_checkpoint

    ckpt_path = ckpt or find_checkpoint(cfg)
    resolve_dtype(dtype, resolve_device(device))  # a bad choice is an input error, found before loading
    if offload not in ("none", "model"):
        raise VcraftError(f"unknown --offload '{offload}'; use none or model")
    encoder = any(v.settings.continues is not None for v in todo)
    job = Job(cfg, ckpt_path, fmt.value, device=device, dtype=dtype, offload=offload == "model",
              compile=compile_unet, config_file=config, overrides=list(overrides), encoder=encoder)
    pool = _pool(todo, ray, workers, cpus_per_worker, gpus_per_worker)
    if seed is None and from_json is None:
        _log(f"seed: {base_seed} (random; pass --seed {base_seed} to repeat)", quiet)
    outcomes = _locally(job, todo, quiet) if pool is None else _on_ray(job, todo, pool, quiet)
    failed, stdout = [], sys.stdout  # the reports' stream, whatever a Ray session does to sys.stdout
    for done, outcome in enumerate(outcomes, 1):
        video, s = outcome.video, outcome.video.settings
        if outcome.error is not None:
            failed.append(video)
            _log(f"error: video {video.index} ({s.prompt!r}) failed: {outcome.error}")
        else:
            _report(outcome, as_json, quiet, f"[{done}/{len(todo)}]", stdout)
    if failed:
        _log(f"{len(failed)} of {len(todo)} videos failed: " + ", ".join(str(v.index) for v in failed))
        raise typer.Exit(1)


def _locally(job, todo: list, quiet: bool):
    """Outcomes of rendering `todo` in this process, one after the other, with a bar over each one's steps."""
    from vcraft.app.render import load, render

    started = time.perf_counter()
    pipe = load(job)
    _log(f"loaded {job.config.name} from {job.ckpt} on {pipe.device} ({str(pipe.dtype).removeprefix('torch.')}) "
         f"in {time.perf_counter() - started:.1f} s", quiet)
    if job.compile:
        _log("--compile: the first step compiles the UNet (a minute or more)", quiet)
    with _remembered_interrupt() as interrupted:
        for done, video in enumerate(todo, 1):
            bar = _progress(quiet, f"[{done}/{len(todo)}]", pipe.window_count(video.settings))
            try:
                yield render(pipe, job, video, _interruptible(bar, interrupted))
            finally:
                bar(None, None)


def _interruptible(progress, interrupted: threading.Event):
    """`progress`, raising KeyboardInterrupt first once `interrupted` is set (see _remembered_interrupt)."""
    def step(step: int, total: int) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        progress(step, total)

    return step


@contextlib.contextmanager
def _remembered_interrupt():
    """An Event set by Ctrl-C, which still raises KeyboardInterrupt as usual. Python drops that exception where it
    lands in an object's finaliser (an image writer closing, say); the progress callback then raises it at the
    next denoising step instead."""
    interrupted = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler or threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_interrupt(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _pool(todo: list, address: Optional[str], workers: Optional[int], cpus: int, gpus: Optional[float]):
    """The Ray pool the options ask for (None: render here), checked before any work."""
    from vcraft.app.batch import STDOUT
    from vcraft.app.cluster import Pool, import_ray

    if address is None:
        if workers is not None or gpus is not None or cpus != 1:
            raise VcraftError("--workers, --cpus-per-worker and --gpus-per-worker size a Ray pool; add --ray")
        return None
    if any(v.path == STDOUT for v in todo):
        raise VcraftError("--ray writes videos to files; give -o a file or folder, not -")
    if workers is not None and workers < 1 or cpus < 1 or gpus is not None and gpus < 0:
        raise VcraftError("--workers and --cpus-per-worker must be at least 1, --gpus-per-worker at least 0")
    import_ray()
    return Pool(address, workers, cpus, gpus)


def _on_ray(job, todo: list, pool, quiet: bool):
    """Outcomes of rendering `todo` on Ray workers, in the order they complete, with a bar over the videos."""
    from vcraft.app.cluster import render_on_ray

    bar = _progress(quiet, "videos", unit="video")
    bar(0, len(todo))
    try:
        for done, outcome in enumerate(render_on_ray(job, todo, pool, lambda line: _log(line, quiet)), 1):
            bar(done, len(todo))
            yield outcome
    finally:
        bar(None, None)


def _report(outcome, as_json: bool, quiet: bool, label: str, stdout) -> None:
    from vcraft.app.batch import STDOUT

    video, s = outcome.video, outcome.video.settings
    _log(f"{label} {s.prompt!r} seed {s.seed}: {outcome.seconds:.1f} s", quiet)
    if video.path == STDOUT:
        return
    if as_json:
        print(json.dumps({"prompt": s.prompt, "path": str(video.path), "seed": s.seed, "frames": s.frames,
                          "fps": s.save_fps, "size": [s.height, s.width], "seconds": round(outcome.seconds, 2)}),
              file=stdout, flush=True)
    else:
        print(video.path, file=stdout, flush=True)


def _progress(quiet: bool, label: str, windows: int = 1, unit: str = "step"):
    """A callback(step, total) drawing a bar over the denoising steps of all windows (long videos show
    which window runs), or over other units, on a terminal only; callback(None, None) closes it."""
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
            state["bar"] = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=False)
        if windows > 1:
            state["bar"].set_postfix_str(f"window {(step - 1) * windows // total + 1}/{windows}",
                                         refresh=False)
        state["bar"].update(step - state["bar"].n)

    return update


@app.command()
def ui(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"Preset name (default {DEFAULT_PRESET})."),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="vcraft YAML or original VideoCrafter inference YAML."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (.ckpt or .safetensors)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every network interface)."),
    port: int = typer.Option(7860, help="Port to listen on."),
    output: Path = typer.Option(Path("outputs"), "--output", "-o", help="Folder for the videos (and only there)."),
    share: bool = typer.Option(False, "--share", help="Also a public link through Gradio's share servers."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", help="auto, fp32, fp16 or bf16."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value: key=value."),
    verbose: bool = typer.Option(False, "--verbose", help="Tracebacks with errors (read by main)."),
) -> None:
    """A local web app: prompt, settings, the video in the page (needs vcraft[ui])."""
    from vcraft.app.ui import import_gradio

    import_gradio(output)
    cfg = _resolve_config(model, config, overrides)
    from vcraft.app.render import Job
    from vcraft.app.ui import serve
    from vcraft.loaders.devices import resolve_device, resolve_dtype
    from vcraft.loaders.weights import find_checkpoint

    ckpt_path = ckpt or find_checkpoint(cfg)
    resolve_dtype(dtype, resolve_device(device))
    serve(Job(cfg, ckpt_path, "mp4", device, dtype, config_file=config, overrides=list(overrides)), output, host,
          port, share, _log)


@app.command()
def convert(
    source: Path = typer.Argument(..., help="Official .ckpt (or .safetensors)."),
    target: Path = typer.Argument(..., help="Output .safetensors."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16 for the weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    verbose: bool = typer.Option(False, "--verbose", help="Tracebacks with errors."),
) -> None:
    """Convert a checkpoint to safetensors once, so later loads are fast and run no pickle code."""
    from vcraft.loaders.checkpoints import DTYPES, load_state_dict, save_state_dict
    from vcraft.loaders.components import split
    from vcraft.loaders.loading import identify_preset

    if dtype not in DTYPES:
        raise VcraftError(f"unknown dtype '{dtype}'; use fp32, fp16 or bf16")
    if target.suffix != ".safetensors":
        raise VcraftError(f"the output must end in .safetensors, got {target.name}")
    if target.exists() and not overwrite:
        raise VcraftError(f"{target} already exists; use --overwrite to replace it")
    state = load_state_dict(source)
    split(state, str(source))
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
    from vcraft.loaders.checkpoints import load_state_dict
    from vcraft.loaders.components import SCHEDULE_KEYS, split
    from vcraft.loaders.loading import identify_preset

    state = load_state_dict(ckpt)
    parts, _ = split(state, str(ckpt))
    weights = [v for k, v in state.items() if k not in SCHEDULE_KEYS]
    facts = {
        "file": str(ckpt),
        "preset": identify_preset(state) or "none (no preset fits; use --config with its YAML)",
        "dtype": ", ".join(sorted({str(v.dtype).removeprefix("torch.") for v in weights})),
        **{f"{name}_parameters": sum(v.numel() for v in tensors.values()) for name, tensors in parts.items()},
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
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or mps (auto: the best there is)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No messages on stderr."),
    verbose: bool = typer.Option(False, "--verbose", help="Tracebacks with errors."),
) -> None:
    """Train a model from scratch on the synthetic shapes data (autoencoder, then diffusion).

    Resumable: run the same command again to continue from the last checkpoint in the run folder."""
    from vcraft.config import load_config
    from vcraft.loaders.devices import resolve_device
    from vcraft.train import train as run_training

    cfg = load_config(config, overrides)
    dev = resolve_device(device)
    started = time.perf_counter()
    model_path = run_training(cfg, output, lambda line: _log(line, quiet), device=dev)
    _log(f"trained in {(time.perf_counter() - started) / 60:.1f} min; generate with: vcraft generate PROMPT "
         f"--config {output / 'config.yaml'} --ckpt {model_path}", quiet)
    print(model_path, flush=True)


@app.command()
def download(
    names: Optional[list[str]] = typer.Argument(None, metavar="MODEL...", help="Presets to fetch, e.g. vc2-512."),
    list_only: bool = typer.Option(False, "--list", help="What each preset fetches, and its size."),
    keep_ckpt: bool = typer.Option(False, "--keep-ckpt", help="Keep the original checkpoint in the Hugging Face "
                                                              "cache after converting it."),
    no_convert: bool = typer.Option(False, "--no-convert", help="Only fetch the original checkpoint into the "
                                                                "Hugging Face cache."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or messages on stderr."),
    verbose: bool = typer.Option(False, "--verbose", help="Tracebacks with errors."),
) -> None:
    """Fetch official weights from the Hugging Face Hub once: verified, then converted to fp16 safetensors.

    Files go to the Hugging Face cache (HF_HOME; HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply), the converted
    weights to vcraft's cache (VCRAFT_HOME). Prints the path of each model's weights."""
    from vcraft.config import load_preset, preset_names
    from vcraft.loaders.weights import size_text

    if list_only:
        from vcraft.loaders.download import hub_size

        rows = [(cfg.name, f"{cfg.weights.repo}/{cfg.weights.file}",
                 size_text(hub_size(cfg.weights) or cfg.weights.size), cfg.description)
                for cfg in map(load_preset, preset_names()) if cfg.weights is not None]
        print(_table([("MODEL", "FETCHES", "SIZE", "WHAT"), *rows]))
        return
    if not names:
        raise VcraftError("name the models to download, e.g. vcraft download vc2-512 (vcraft download --list "
                          "shows them)")
    from huggingface_hub.utils import disable_progress_bars

    from vcraft.loaders.download import download as fetch_weights
    from vcraft.loaders.download import weights_source

    configs = [load_preset(name) for name in names]
    for cfg in configs:  # every name checked before anything is fetched
        weights_source(cfg)
    if quiet or not sys.stderr.isatty():
        disable_progress_bars()
    for cfg in configs:
        print(fetch_weights(cfg, lambda line: _log(line, quiet), not no_convert, keep_ckpt), flush=True)


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="One JSON object per model instead of a table.")
           ) -> None:
    """The model presets: whether each one's weights are on this machine, where, their size and dtype."""
    from vcraft.config import load_preset, preset_names
    from vcraft.loaders.checkpoints import stored_dtypes
    from vcraft.loaders.weights import locate, size_text

    rows = [("MODEL", "PRESENT", "SIZE", "DTYPE", "SOURCE", "WHERE")]
    for cfg in map(load_preset, preset_names()):
        found = locate(cfg)
        try:
            dtype = ",".join(stored_dtypes(found.path)) if found else None
        except (VcraftError, OSError, ValueError):  # a damaged file is listed, not fatal
            dtype = "unreadable"
        entry = {"model": cfg.name, "description": cfg.description, "present": found is not None,
                 "path": str(found.path) if found else None, "source": found.source if found else None,
                 "size": found.path.stat().st_size if found else None, "dtype": dtype,
                 "hub": f"{cfg.weights.repo}/{cfg.weights.file}" if cfg.weights else None,
                 "download_size": cfg.weights.size if cfg.weights else None}
        if as_json:
            print(json.dumps(entry), flush=True)
        elif found:
            rows.append((cfg.name, "yes", size_text(entry["size"]), dtype, found.source, str(found.path)))
        else:
            how = f"vcraft download {cfg.name}" if cfg.weights else "pass --ckpt"
            rows.append((cfg.name, "no", size_text(entry["download_size"]), "-", "-", how))
    if not as_json:
        print(_table(rows))


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def run(argv: list[str]) -> int:
    """The command line with these arguments, as an exit code (tests call it in-process)."""
    verbose = "--verbose" in argv
    try:
        code = app(args=argv, prog_name="vcraft", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into exit code 130 itself
            code = _fail("interrupted", 130)
    except (KeyboardInterrupt, typer.Abort):
        code = _fail("interrupted", 130)
    except TyperException as exc:  # the parser's own errors: unknown option, bad value, ...
        code = _fail(exc.format_message(), getattr(exc, "exit_code", 2))
    except VcraftError as exc:
        code = _fail(str(exc), 2, verbose)
    except Exception as exc:  # a failure at run time: one line, the traceback only on request
        code = _fail(one_line(exc), 1, verbose)
    return code if isinstance(code, int) else 0


def main() -> None:
    code = run(sys.argv[1:])
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe downstream: nothing more can be said
        pass
    # Skips the interpreter's teardown, which after `import torch` takes most of a second; every output file
    # is closed and in place by now.
    os._exit(code)


def _fail(message: str, code: int, verbose: bool = False) -> int:
    if verbose:
        import traceback

        traceback.print_exc()
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code
