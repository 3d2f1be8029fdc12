"""Rendering planned videos (batch.Video): load the model a run needs, write each video with its sidecar, and say
how it went. Local runs (cli.generate) and Ray workers (cluster.py) both go through here, so that a video's
file does not depend on where it was made.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from vcraft.app import sidecar
from vcraft.app.batch import Video
from vcraft.app.options import STDOUT, RunOptions
from vcraft.app.video import write_video
from vcraft.config import Config
from vcraft.errors import one_line
from vcraft.loaders.lora import LoRA
from vcraft.pipeline.api import Progress, TextToVideo


@dataclass(frozen=True)
class Job:
    """What loading the model and writing a run's videos takes, as plain data (it is sent to Ray workers)."""

    config: Config
    ckpt: Path
    options: RunOptions
    config_file: Optional[Path] = None  # the YAML it came from, when not a preset
    loras: tuple[tuple[LoRA, float], ...] = ()  # merged into the weights once loaded, each at its scale
    parts: dict[str, Path] = field(default_factory=dict)  # components' own files given by the user (--adapter, --unet)
    overrides: list[str] = field(default_factory=list)
    encoder: bool = False  # load the autoencoder's encoder too (videos that continue others)


class Stopped(KeyboardInterrupt):
    """Raised by a progress callback to end a render between two denoising steps (Stop, a cancelled Ray task);
    write_video then removes its temporary file."""


@dataclass(frozen=True)
class Outcome:
    video: Video
    seconds: float
    error: Optional[str] = None  # one line, when the video failed


# A UNet pass smaller than this (parameters times latent positions of a window at the model's default size) runs
# on one CPU thread: its operations are too short to share out, and beside another busy process several threads
# wait on each other at every one of them (docs/benchmarks.md, "CPU threads").
SMALL_WORK = 10**11


def load(job: Job) -> TextToVideo:
    """The job's model, loaded once for its videos; on a CPU, a small one on one thread unless OMP_NUM_THREADS
    says otherwise."""
    o = job.options
    pipe = TextToVideo.from_config(job.config, job.ckpt, o.device, o.dtype, o.offload == "model", job.encoder,
                                   job.parts)
    for lora, scale in job.loras:
        pipe.add_lora(lora, scale, removable=False)  # a run keeps its LoRAs to the end
    if pipe.device.type == "cpu" and unet_work(pipe) < SMALL_WORK and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    return pipe.compile() if o.compile else pipe


def unet_work(pipe: TextToVideo) -> int:
    """The size of one UNet pass at the model's default video size: parameters times latent positions."""
    s, f = pipe.config.sampling, pipe.autoencoder.downsample
    positions = min(s.frames, pipe.config.model.unet.temporal_length) * (s.height // f) * (s.width // f)
    return sum(p.numel() for p in pipe.unet.parameters()) * positions


def render(pipe: TextToVideo, job: Job, video: Video, progress: Optional[Progress] = None) -> Outcome:
    """Make one video and write it. A failure of this video alone (NaN, a write error, out of memory) is
    returned as the outcome's error, so that a batch goes on; Ctrl-C and the like are raised."""
    started = time.perf_counter()
    s, fmt = video.settings, job.options.format
    try:
        chunks = pipe.stream(s, progress)
        if video.path != STDOUT:
            video.path.parent.mkdir(parents=True, exist_ok=True)
            write_video(video.path, chunks, fmt, s.save_fps, sidecar.fields(job, pipe, s))
        else:
            with tempfile.TemporaryDirectory() as folder:  # encoders need a seekable file; then copy it out
                path = write_video(Path(folder) / f"video.{fmt}", chunks, fmt, s.save_fps)
                sys.stdout.buffer.write(path.read_bytes())
                sys.stdout.flush()
    except Exception as exc:
        return Outcome(video, time.perf_counter() - started, one_line(exc))
    return Outcome(video, time.perf_counter() - started)
