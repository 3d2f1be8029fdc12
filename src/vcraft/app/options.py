"""The run's options: where and how its videos are written and where the model runs, as opposed to what each video
looks like (pipeline/settings.py). Built and checked once, by `make_run_options`, from the command line's flags or
the web app's; planning (batch.py), rendering (render.py), Ray (cluster.py) and the web app read them.

Each field's metadata gives its flag and help, from which the command line makes its options.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from vcraft.errors import VcraftError

FORMATS = ("mp4", "gif", "png")
STDOUT = Path("-")


def _flag(help: str, *names: str) -> dict[str, Any]:
    return {"help": help, "names": names}


@dataclass(frozen=True)
class Pool:
    """Where to run and how many workers of what size (`--ray`, `--workers`, per-worker resources)."""

    address: str  # auto, local, or a cluster's address
    workers: Optional[int] = None  # default: as many as the cluster's resources hold
    cpus: int = 1  # per worker; also its torch threads
    gpus: Optional[float] = None  # per worker; default 1 where the cluster has GPUs, else 0


@dataclass(frozen=True)
class RunOptions:
    output: Optional[Path] = field(default=None, metadata=_flag(
        "File (or PNG folder) for one video, - for stdout, else a folder (default outputs/).", "--output", "-o"))
    format: str = field(default="mp4", metadata=_flag("mp4 (default: the -o file's extension, else mp4), gif or png "
                                                      "frames.", "--format"))
    name: Optional[str] = field(default=None, metadata=_flag(
        "File name template: {index} {slug} {seed} {sample} {prompt} (default {index:04d}-{slug}-{seed}).", "--name"))
    overwrite: bool = field(default=False, metadata=_flag("Replace existing outputs.", "--overwrite"))
    skip_existing: bool = field(default=False, metadata=_flag("Keep existing outputs; make the rest.",
                                                              "--skip-existing"))
    device: str = field(default="auto", metadata=_flag("auto, cpu, cuda, cuda:N or mps.", "--device"))
    dtype: str = field(default="auto", metadata=_flag("auto, fp32, fp16 or bf16.", "--dtype"))
    offload: str = field(default="none", metadata=_flag(
        "none, or model: each stage (text encoder, UNet, autoencoder) on the device only while it runs, for small "
        "GPUs.", "--offload"))
    compile: bool = field(default=False, metadata=_flag(
        "Compile the UNet (torch.compile): the first step takes a minute or more, later ones run faster; for long "
        "runs on a GPU.", "--compile"))
    pool: Optional[Pool] = None  # render on Ray (--ray and its sizes); None: in this process


def make_run_options(**given: Any) -> RunOptions:
    """Checked RunOptions (given values over the defaults; None: not given): the format from the output's
    extension when not given; device and dtype resolvable on this machine; one of --overwrite and --skip-existing."""
    given = {k: v for k, v in given.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(RunOptions)}
    if unknown:
        raise TypeError(f"unknown run options: {', '.join(sorted(unknown))}")
    output = given.get("output")
    if "format" not in given and output is not None and output.suffix.lstrip(".").lower() in FORMATS:
        given["format"] = output.suffix.lstrip(".").lower()
    options = RunOptions(**given)
    if options.format not in FORMATS:
        raise VcraftError(f"unknown --format '{options.format}'; use {', '.join(FORMATS)}")
    if options.offload not in ("none", "model"):
        raise VcraftError(f"unknown --offload '{options.offload}'; use none or model")
    if options.overwrite and options.skip_existing:
        raise VcraftError("give either --overwrite or --skip-existing, not both")
    pool = options.pool
    if pool is not None:
        if output == STDOUT:
            raise VcraftError("--ray writes videos to files; give -o a file or folder, not -")
        if pool.workers is not None and pool.workers < 1 or pool.cpus < 1 or pool.gpus is not None and pool.gpus < 0:
            raise VcraftError("--workers and --cpus-per-worker must be at least 1, --gpus-per-worker at least 0")
    from vcraft.loaders.devices import resolve_device, resolve_dtype

    resolve_dtype(options.dtype, resolve_device(options.device))  # a bad choice is an input error, before loading
    return options
