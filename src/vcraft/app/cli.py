"""The `vcraft` command: parses and validates, then calls the Python API. No model logic lives here.

Contract (../shared/DESIGN.md): results on stdout, messages on stderr, one-line `error: ...` messages,
exit codes 0 ok, 1 failed at run time, 2 bad input (found before any heavy work), 130 interrupted.
torch and the models are imported inside the commands, so `vcraft --help` stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import secrets
import signal
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import TyperException

from vcraft import DEFAULT_PRESET
from vcraft.errors import VcraftError, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Text-to-video generation with VideoCrafter-compatible models.")
_verbose = threading.Event()  # set by --verbose, read by `run` when something fails

# The options that choose the model, declared once for the commands that take them.
MODEL = typer.Option(None, "--model", "-m", help=f"Preset name (default {DEFAULT_PRESET}).")
CONFIG = typer.Option(None, "--config", "-c", help="vcraft YAML or original VideoCrafter inference YAML.")
CKPT = typer.Option(None, "--ckpt", help="Checkpoint (.ckpt or .safetensors).")
ADAPTER = typer.Option(None, "--adapter", help="A control adapter's file, for a config that gives none (an original "
                                               "VideoControl YAML).")
UNET = typer.Option(None, "--unet", help="A whole UNet's state dict that replaces the model's (T2V-Turbo-v2's "
                                         "unet_mg.pt).")
OVERRIDES = typer.Option([], "--set", help="Override a config value: key=value.")


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="Tracebacks with errors.")) -> None:
    if verbose:
        _verbose.set()


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


def _flags(cls: type, types: dict, only: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """Typer options for the fields of a dataclass that describe themselves (metadata `help`, optional `names`), or
    for those `only` names: a field's flag is `--field-name` unless `names` says; `types` maps a field's type to the
    option's, and each option defaults to None (not given), a flag to False."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if "help" in f.metadata and (not only or f.name in only):
            names = f.metadata["names"] or (f"--{f.name.replace('_', '-')}",)
            kind = types.get(hints[f.name], hints[f.name])
            default = False if kind is bool else None
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                            default=typer.Option(default, *names, help=f.metadata["help"])))
    return params


def _with_flags(*groups: list[inspect.Parameter]):
    """A command that also takes these options (as keyword arguments, into its **flags)."""
    def extend(command):
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
        command.__signature__ = signature.replace(parameters=[*own, *(p for group in groups for p in group)])
        return command

    return extend


def _setting_flags() -> list[inspect.Parameter]:
    from vcraft.pipeline.inputs import Footage, Picture
    from vcraft.pipeline.settings import Settings

    types = {int: Optional[int], float: Optional[float], str: Optional[str],
             Optional[Picture]: Optional[Path], Optional[Footage]: Optional[Path]}
    return _flags(Settings, types)


def _run_flags(*only: str) -> list[inspect.Parameter]:
    from vcraft.app.options import RunOptions

    return _flags(RunOptions, {str: Optional[str]}, only)


@app.command()
@_with_flags(_setting_flags(), _run_flags())
def generate(
    prompts: Optional[list[str]] = typer.Argument(None, help="Prompts; - reads them from stdin, one a line."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts-file", "-f",
                                                help="A .txt, .jsonl or .csv file of prompts (and settings)."),
    from_json: Optional[Path] = typer.Option(None, "--from", help="Make again the video of this JSON sidecar."),
    model: Optional[str] = MODEL,
    config: Optional[Path] = CONFIG,
    ckpt: Optional[Path] = CKPT,
    adapter: Optional[Path] = ADAPTER,
    unet: Optional[Path] = UNET,
    overrides: list[str] = OVERRIDES,
    lora: list[str] = typer.Option([], "--lora", help="A LoRA merged into the model: FILE or an official LoRA's "
                                                      "NAME, then :SCALE (1.0 by default); repeatable."),
    then: list[str] = typer.Option([], "--then", help="A next prompt along the video, as PROMPT (the video split "
                                                      "evenly) or FRAME:PROMPT (where it starts); repeatable."),
    prompt_separator: Optional[str] = typer.Option(None, "--prompt-separator", help="Split each line of stdin or a "
                                                   ".txt prompt file on this into prompts along the video (FreeNoise's "
                                                   "files: ';')."),
    seed: Optional[int] = typer.Option(None, min=0, help="Base seed (default: random, reported)."),
    samples: int = typer.Option(1, help="Videos per prompt."),
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
    **flags,
) -> None:
    """Generate videos from text prompts, prompt files or stdin."""
    from vcraft.app import sidecar
    from vcraft.app.batch import plan
    from vcraft.app.options import STDOUT, make_run_options
    from vcraft.app.prompts import PromptRow, gather_prompts
    from vcraft.pipeline.settings import INPUT_FILES, READERS, TYPES, then_prompts

    chosen = {k: flags.pop(k) for k in TYPES if k in flags}
    if then:
        if len(prompts or []) != 1 or prompts[0] == "-" or prompts_file or from_json:
            raise VcraftError("--then follows one prompt given as an argument; a prompt file's rows give "
                              "\"prompts\" (and \"at\") instead")
        chosen.update(then_prompts(prompts[0], then))
    loras = [_lora(spec) for spec in lora]  # read once, before anything else is done
    for key in INPUT_FILES:  # read once for the whole run
        if chosen[key] is not None:
            chosen[key] = READERS[TYPES[key]](chosen[key])
    if from_json is not None:
        if prompts or prompts_file or model or config:
            raise VcraftError("--from makes the video its JSON file describes; give no prompts, --model or --config")
        recipe = sidecar.recipe(from_json)
        config = Path(recipe["config"]) if recipe.get("config") else None
        model = None if config else recipe["model"]
        ckpt = ckpt or (Path(recipe["ckpt"]) if recipe.get("ckpt") else None)
        adapter = adapter or (Path(recipe["parts"]["adapter"]) if "adapter" in recipe.get("parts", {}) else None)
        unet = unet or (Path(recipe["parts"]["unet"]) if "unet" in recipe.get("parts", {}) else None)
        overrides = [*recipe.get("overrides", []), *overrides]
        loras = loras or recipe["loras"]
        chosen = {**{k: recipe.get(k) for k in chosen}, **{k: v for k, v in chosen.items() if v is not None}}
        schedule = {k: recipe[k] for k in ("prompts", "at") if recipe.get(k)}
        rows = [PromptRow(recipe["prompt"], {"seed": recipe["seed"] if seed is None else seed, **schedule},
                          str(from_json))]
        flags["format"] = flags["format"] or recipe.get("format")
    options = make_run_options(**flags, pool=_pool(ray, workers, cpus_per_worker, gpus_per_worker))
    if options.pool is not None:
        from vcraft.app.cluster import import_ray

        import_ray()
    cfg = _resolve_config(model, config, overrides)
    if from_json is None:
        rows = gather_prompts(prompts or [], prompts_file, sys.stdin, prompt_separator)
    base_seed = seed if seed is not None else secrets.randbelow(2**31)
    videos = plan(rows, cfg, chosen, base_seed, samples, options)
    if ckpt is not None and not ckpt.is_file():
        raise VcraftError(f"checkpoint not found: {ckpt}")
    from vcraft.loaders.weights import find_merged_lora, find_parts

    parts = _parts(adapter, unet)
    find_parts(cfg, parts)  # a missing part said before any work
    find_merged_lora(cfg)
    todo = [v for v in videos if not (options.skip_existing and v.path != STDOUT and v.path.exists())]
    if len(todo) < len(videos):
        _log(f"skipping {len(videos) - len(todo)} video(s) whose output exists", quiet)
    if not todo:
        return

    if options.pool is None:  # a FreeNoise video too long for this machine, said before loading (Ray's workers: theirs)
        from vcraft.loaders.devices import resolve_device, resolve_dtype
        from vcraft.pipeline.memory import check_fits

        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        for video in todo:
            check_fits(cfg.model, video.settings, device, dtype)

    from vcraft.app.render import Job
    from vcraft.loaders.weights import find_checkpoint

    encoder = any(v.settings.continues is not None for v in todo)
    job = Job(cfg, ckpt or find_checkpoint(cfg), options, config_file=config, overrides=list(overrides),
              encoder=encoder, loras=tuple(loras), parts=parts)
    if seed is None and from_json is None:
        _log(f"seed: {base_seed} (random; pass --seed {base_seed} to repeat)", quiet)
    outcomes = _locally(job, todo, quiet) if options.pool is None else _on_ray(job, todo, quiet)
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


def _parts(adapter: Optional[Path], unet: Optional[Path]) -> dict[str, Path]:
    """Components' own files given on the command line, by component name."""
    return {name: file for name, file in (("adapter", adapter), ("unet", unet)) if file is not None}


def _lora(spec: str):
    """`FILE`, `NAME` (an official LoRA) or either with `:SCALE`, as a read LoRA and its scale."""
    from vcraft.loaders.lora import open_lora

    path, _, scale = spec.rpartition(":")
    try:
        value = float(scale)
    except ValueError:  # no scale given (or a colon inside the path)
        path, value = spec, 1.0
    if not path:
        raise VcraftError(f"--lora {spec}: give FILE, NAME, FILE:SCALE or NAME:SCALE")
    return open_lora(path), value


def _present_loras(cfg) -> list[str]:
    """The names of the model's official LoRAs that are on this machine."""
    from vcraft.loaders.weights import hub_cached

    return [name for name, source in cfg.loras.items() if hub_cached(source) is not None]


def _pool(address: Optional[str], workers: Optional[int], cpus: int, gpus: Optional[float]):
    """The Ray pool the flags ask for (None: render here)."""
    from vcraft.app.options import Pool

    if address is None:
        if workers is not None or gpus is not None or cpus != 1:
            raise VcraftError("--workers, --cpus-per-worker and --gpus-per-worker size a Ray pool; add --ray")
        return None
    return Pool(address, workers, cpus, gpus)


def _locally(job, todo: list, quiet: bool):
    """Outcomes of rendering `todo` in this process, one after the other, with a bar over each one's steps."""
    from vcraft.app.render import load, render

    started = time.perf_counter()
    pipe = load(job)
    _log(f"loaded {job.config.name} from {job.ckpt} on {pipe.device} ({str(pipe.dtype).removeprefix('torch.')}) "
         f"in {time.perf_counter() - started:.1f} s", quiet)
    if job.options.compile:
        _log("--compile: the first step compiles the UNet (a minute or more)", quiet)
    with _remembered_interrupt() as interrupted:
        for done, video in enumerate(todo, 1):
            bar = _bar(quiet, f"[{done}/{len(todo)}]", pipe.window_count(video.settings))
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

    def on_interrupt(*_):  # the signal handler's (signal number, frame)
        interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _on_ray(job, todo: list, quiet: bool):
    """Outcomes of rendering `todo` on Ray workers, in the order they complete, with a bar over the videos."""
    from vcraft.app.cluster import render_on_ray

    bar = _bar(quiet, "videos", unit="video")
    bar(0, len(todo))
    try:
        for done, outcome in enumerate(render_on_ray(job, todo, lambda line: _log(line, quiet)), 1):
            bar(done, len(todo))
            yield outcome
    finally:
        bar(None, None)


def _report(outcome, as_json: bool, quiet: bool, label: str, stdout) -> None:
    from vcraft.app.options import STDOUT

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


def _bar(quiet: bool, label: str, windows: int = 1, unit: str = "step"):
    """A callback(step, total) drawing a bar over the denoising steps of all windows (long videos show
    which window runs), or over other units, on a terminal only; callback(None, None) closes it."""
    if quiet or not sys.stderr.isatty():
        return lambda *_: None
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
@_with_flags(_run_flags("device", "dtype"))
def ui(
    model: Optional[str] = MODEL,
    config: Optional[Path] = CONFIG,
    ckpt: Optional[Path] = CKPT,
    adapter: Optional[Path] = ADAPTER,
    unet: Optional[Path] = UNET,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every network interface)."),
    port: int = typer.Option(7860, help="Port to listen on."),
    output: Path = typer.Option(Path("outputs"), "--output", "-o", help="Folder for the videos (and only there)."),
    share: bool = typer.Option(False, "--share", help="Also a public link through Gradio's share servers."),
    overrides: list[str] = OVERRIDES,
    lora: list[str] = typer.Option([], "--lora", help="A LoRA the page offers: FILE or an official LoRA's NAME "
                                                      "(this model's present ones are offered anyway); repeatable."),
    **flags,
) -> None:
    """A local web app: prompt, settings, the video in the page (needs vcraft[ui])."""
    from vcraft.app.ui import import_gradio

    import_gradio(output)
    cfg = _resolve_config(model, config, overrides)
    from vcraft.app.options import make_run_options
    from vcraft.app.render import Job
    from vcraft.app.ui import serve
    from vcraft.loaders.weights import find_checkpoint

    options = make_run_options(output=output, **flags)
    offered = {name: dataclasses.replace(_lora(name)[0], trigger=cfg.loras[name].trigger)
               for name in _present_loras(cfg)}
    offered.update({Path(spec).stem if Path(spec).exists() else spec: _lora(spec)[0] for spec in lora})
    parts = _parts(adapter, unet)
    serve(Job(cfg, ckpt or find_checkpoint(cfg), options, config_file=config, overrides=list(overrides), parts=parts),
          host, port, share, _log, offered)


@app.command()
def convert(
    source: Path = typer.Argument(..., help="Official .ckpt (or .safetensors)."),
    target: Path = typer.Argument(..., help="Output .safetensors."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16 for the weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
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


class _RecipeByDefault(typer.core.TyperGroup):
    """`vcraft train CONFIG` is `vcraft train recipe CONFIG`: the form the recipe had before `train lora`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["recipe", *args]
        return super().parse_args(ctx, args)


train_app = typer.Typer(cls=_RecipeByDefault, no_args_is_help=True, rich_markup_mode=None,
                        help="Train the embedded model (recipe, the default), or a LoRA on your own clips (lora).")
app.add_typer(train_app, name="train")


@train_app.command("recipe")
def train(
    config: Path = typer.Argument(..., help="A vcraft YAML with a train section, e.g. configs/shapes.yaml."),
    output: Path = typer.Option(Path("runs/shapes"), "--output", "-o",
                                help="Run folder: checkpoints, log, and the trained model."),
    overrides: list[str] = OVERRIDES,
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or mps (auto: the best there is)."),
    control: bool = typer.Option(False, "--control", help="Train only the config's control adapter, on the trained "
                                                          "model (--ckpt, default: the preset's weights), frozen."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="--control: the trained model."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No messages on stderr."),
) -> None:
    """Train a model from scratch on the synthetic shapes data (autoencoder, then diffusion), or with --control its
    control adapter.

    Resumable: run the same command again to continue from the last checkpoint in the run folder."""
    from vcraft.config import load_config
    from vcraft.loaders.devices import resolve_device
    from vcraft.loaders.weights import find_checkpoint
    from vcraft.train import train as run_training
    from vcraft.train.control import train_control

    cfg = load_config(config, overrides)
    dev = resolve_device(device)
    started = time.perf_counter()
    log = lambda line: _log(line, quiet)  # noqa: E731
    if control:
        path = train_control(cfg, ckpt or find_checkpoint(cfg), output, log, device=dev)
        _log(f"trained in {(time.perf_counter() - started) / 60:.1f} min; use it with: vcraft generate PROMPT "
             f"--model {cfg.name} --adapter {path} --control-video VIDEO", quiet)
        print(path, flush=True)
        return
    model_path = run_training(cfg, output, log, device=dev)
    _log(f"trained in {(time.perf_counter() - started) / 60:.1f} min; generate with: vcraft generate PROMPT "
         f"--config {output / 'config.yaml'} --ckpt {model_path}", quiet)
    print(model_path, flush=True)


@train_app.command("lora")
def train_lora(
    data: Path = typer.Argument(..., metavar="DATA", help="A folder of clips with a caption beside each (clip.mp4 + "
                                                         "clip.txt; MP4, GIF or a PNG folder), or a .csv/.jsonl of "
                                                         "path and caption."),
    output: Path = typer.Option(..., "--output", "-o", help="Run folder: checkpoints, log, validation videos, and "
                                                           "lora.safetensors."),
    model: Optional[str] = MODEL,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="vcraft YAML or original VideoCrafter YAML."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (default: the preset's weights)."),
    overrides: list[str] = OVERRIDES,
    trigger: str = typer.Option("", help="Appended to every caption as written, e.g. ', outline style'."),
    frames: Optional[int] = typer.Option(None, help="Frames a clip (default: the model's)."),
    height: Optional[int] = typer.Option(None, help="Height clips are scaled and cropped to (default: the model's)."),
    width: Optional[int] = typer.Option(None, help="Width clips are scaled and cropped to (default: the model's)."),
    stride: int = typer.Option(1, help="Take every Nth frame of a clip."),
    fps: Optional[float] = typer.Option(None, help="Instead of --stride: the stride nearest to this frame rate."),
    rank: int = typer.Option(8, help="The LoRA's rank."),
    alpha: float = typer.Option(8.0, help="Its update is scaled by alpha / rank."),
    lr: float = typer.Option(1e-4, help="Peak learning rate (AdamW)."),
    schedule: str = typer.Option("cosine", help="After the warm-up: cosine (to zero) or constant."),
    warmup: int = typer.Option(0, help="Warm-up steps."),
    steps: int = typer.Option(500, help="Optimiser steps."),
    batch_size: int = typer.Option(1, help="Clips a micro-batch."),
    accumulate: int = typer.Option(1, help="Micro-batches a step (gradient accumulation)."),
    target: Optional[list[str]] = typer.Option(None, help="UNet layers to adapt: names they end with (repeatable; "
                                                         "default: attention and feed-forward projections)."),
    seed: int = typer.Option(0, help="Seed of the LoRA's start and of the batches, timesteps and noise."),
    checkpoint_every: int = typer.Option(100, help="Write a checkpoint every N steps."),
    validate: Optional[list[str]] = typer.Option(None, help="A prompt rendered into RUN/validation every "
                                                           "--validate-every steps (repeatable)."),
    validate_every: int = typer.Option(100, help="Steps between validation videos."),
    text: bool = typer.Option(False, "--text", help="Also adapt the text encoder's token embeddings: a new trigger "
                                                    "phrase's words learn a meaning of their own."),
    prior: int = typer.Option(0, help="Also train on N videos the model itself makes from the captions without the "
                                      "trigger (prior preservation): the LoRA then leaves prompts without it alone."),
    decoder: bool = typer.Option(False, "--decoder", help="Also adapt the autoencoder's decoder, trained to redraw "
                                                          "the clips' frames: for a look it cannot draw (thin lines, "
                                                          "a texture)."),
    timestep_exponent: float = typer.Option(1.0, help="Timesteps drawn as T * u**K: 1 uniform, above 1 more of the "
                                                      "clean end (edges, corners)."),
    min_snr: Optional[float] = typer.Option(None, help="Min-SNR-gamma loss weighting: an error in the clean latents "
                                                       "weighs min(SNR, GAMMA) (such as 5); default: plain MSE."),
    ema: float = typer.Option(0.0, help="Keep a moving average of the LoRA's weights with this decay (such as "
                                        "0.995) and write it instead of the last weights; 0: off."),
    mixed_precision: str = typer.Option("no", help="bf16 or fp16 autocast (a GPU only)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or mps (auto: the best there is)."),
    resume: bool = typer.Option(False, help="Continue the run in --output from its last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No messages on stderr."),
) -> None:
    """Train a LoRA of a model on your own clips; --lora then loads RUN/lora.safetensors.

    Every clip is read and checked first; the model stays frozen. Resumable with --resume."""
    from vcraft.loaders.devices import resolve_device
    from vcraft.loaders.weights import find_checkpoint
    from vcraft.pipeline.settings import spatial_multiple
    from vcraft.train.clips import Framing, find_clips, read_clips
    from vcraft.train.lora import DEFAULT_TARGETS, LoRATraining
    from vcraft.train.lora import train_lora as run_training

    cfg = _resolve_config(model, config, overrides)
    dev = resolve_device(device)
    options = LoRATraining(rank=rank, alpha=alpha, lr=lr, schedule=schedule, warmup=warmup, steps=steps,
                           batch_size=batch_size, accumulate=accumulate, targets=tuple(target or DEFAULT_TARGETS),
                           seed=seed, checkpoint_every=checkpoint_every,
                           validate_every=validate_every if validate else 0, mixed_precision=mixed_precision,
                           trigger=trigger, text=text, prior=prior, decoder=decoder,
                           timestep_exponent=timestep_exponent, min_snr=min_snr, ema=ema)
    options.check(dev)
    s = cfg.sampling
    path = ckpt or find_checkpoint(cfg)
    started = time.perf_counter()
    framing = Framing(frames or s.frames, height or s.height, width or s.width, stride, fps)
    framing.check(spatial_multiple(cfg.model))
    videos, captions = read_clips(find_clips(data), framing, trigger)
    log = lambda line: _log(line, quiet)  # noqa: E731
    log(f"{len(videos)} clips read and checked in {time.perf_counter() - started:.1f} s")
    made = run_training(cfg, path, videos, captions, options, output, log, dev, resume,
                        _validation(cfg, validate or [], seed, output / "validation", log))
    _log(f"trained in {(time.perf_counter() - started) / 60:.1f} min; use it with: vcraft generate PROMPT "
         f"--model {cfg.name} --lora {made}", quiet)
    print(made, flush=True)


def _validation(cfg, prompts: list[str], seed: int, folder: Path, log):
    """A checkpoint's validation: each prompt rendered with the model as it is then, written as
    `folder/step-NNNNNN-K.mp4`."""
    def render(pipe, step: int) -> None:
        from vcraft.app.video import write_video

        folder.mkdir(parents=True, exist_ok=True)
        for k, prompt in enumerate(prompts):
            frames = pipe(prompt, seed=seed)
            write_video(folder / f"step-{step:06d}-{k}.mp4", [frames], "mp4", cfg.sampling.save_fps)
        log(f"validation: {len(prompts)} video(s) for step {step} in {folder}")

    return render if prompts else None


@app.command()
def download(
    names: Optional[list[str]] = typer.Argument(None, metavar="MODEL...", help="Presets to fetch, e.g. vc2-512, or "
                                                                               "official LoRAs, e.g. loving-vincent."),
    list_only: bool = typer.Option(False, "--list", help="What each preset and LoRA fetches, and its size."),
    keep_ckpt: bool = typer.Option(False, "--keep-ckpt", help="Keep the original checkpoint in the Hugging Face "
                                                              "cache after converting it."),
    no_convert: bool = typer.Option(False, "--no-convert", help="Only fetch the original checkpoint into the "
                                                                "Hugging Face cache."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or messages on stderr."),
) -> None:
    """Fetch official weights from the Hugging Face Hub once: verified, then converted to fp16 safetensors.

    Files go to the Hugging Face cache (HF_HOME; HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply), the converted
    weights to vcraft's cache (VCRAFT_HOME); a LoRA stays in the Hugging Face cache as it is. Prints the path of each
    model's weights or LoRA."""
    from vcraft.config import load_preset, preset_names
    from vcraft.loaders.weights import official_loras, size_text

    loras = official_loras()
    if list_only:
        from vcraft.loaders.download import hub_size

        presets = [cfg for cfg in map(load_preset, preset_names()) if cfg.weights is not None]
        fetched = {cfg.name: [cfg.weights, *(p for p in cfg.parts.values() if p.repo),
                              *([cfg.lora] if cfg.lora else [])] for cfg in presets}  # the weights, then its own files
        rows = [(cfg.name, " + ".join(f"{f.repo}/{f.file}" for f in fetched[cfg.name]),
                 " + ".join(size_text(hub_size(f) or f.size) for f in fetched[cfg.name]), cfg.description)
                for cfg in presets]
        rows += [(name, f"{source.repo}/{source.file}", size_text(hub_size(source) or source.size),
                  f"LoRA for {cfg.name}, trigger {source.trigger!r}") for name, (cfg, source) in loras.items()]
        print(_table([("MODEL", "FETCHES", "SIZE", "WHAT"), *rows]))
        return
    if not names:
        raise VcraftError("name the models to download, e.g. vcraft download vc2-512 (vcraft download --list "
                          "shows them)")
    from huggingface_hub.utils import disable_progress_bars

    from vcraft.loaders.download import download as fetch_weights
    from vcraft.loaders.download import download_file, weights_source

    configs = {name: None if name in loras else load_preset(name) for name in names}
    for cfg in configs.values():  # every name checked before anything is fetched
        if cfg is not None:
            weights_source(cfg)
    if quiet or not sys.stderr.isatty():
        disable_progress_bars()
    log = lambda line: _log(line, quiet)  # noqa: E731
    for name, cfg in configs.items():
        path = download_file(loras[name][1], log) if cfg is None else fetch_weights(cfg, log, not no_convert, keep_ckpt)
        print(path, flush=True)


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="One JSON object per model instead of a table.")
           ) -> None:
    """The model presets and their official LoRAs: whether each one's weights are on this machine, where, their size
    and dtype."""
    from vcraft.config import load_preset, preset_names
    from vcraft.loaders.checkpoints import stored_dtypes
    from vcraft.loaders.weights import HUB_CACHE, hub_cached, locate, official_loras, size_text

    rows = [("MODEL", "PRESENT", "SIZE", "DTYPE", "SOURCE", "WHERE")]
    for cfg in map(load_preset, preset_names()):
        found = locate(cfg) if _parts_present(cfg) else None  # present: everything the model loads
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
    for name, (cfg, source) in official_loras().items():
        path = hub_cached(source)
        if as_json:
            print(json.dumps({"model": name, "lora_for": cfg.name, "trigger": source.trigger, "present": bool(path),
                              "path": str(path) if path else None, "hub": f"{source.repo}/{source.file}"}), flush=True)
        else:
            rows.append((f"{name} (LoRA for {cfg.name}, trigger {source.trigger!r})", "yes" if path else "no",
                         size_text(path.stat().st_size if path else source.size), "-",
                         HUB_CACHE if path else "-", str(path) if path else f"vcraft download {name}"))
    if not as_json:
        print(_table(rows))


def _parts_present(cfg) -> bool:
    """Whether the files of the preset's separate components (an adapter, a depth estimator, a UNet) and the LoRA it is
    made of are on this machine."""
    from vcraft.loaders.weights import find_merged_lora, find_parts

    try:
        find_parts(cfg, {})
        find_merged_lora(cfg)
    except VcraftError:
        return False
    return True


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def run(argv: list[str]) -> int:
    """The command line with these arguments, as an exit code (tests call it in-process)."""
    _verbose.clear()
    try:
        code = app(args=argv, prog_name="vcraft", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into exit code 130 itself
            code = _fail("interrupted", 130)
    except (KeyboardInterrupt, typer.Abort):
        code = _fail("interrupted", 130)
    except TyperException as exc:  # the parser's own errors: unknown option, bad value, ...
        code = _fail(exc.format_message(), getattr(exc, "exit_code", 2))
    except VcraftError as exc:
        code = _fail(str(exc), 2, _verbose.is_set())
    except Exception as exc:  # a failure at run time: one line, the traceback only on request
        code = _fail(one_line(exc), 1, _verbose.is_set())
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
