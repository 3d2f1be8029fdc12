"""The step loop every training stage runs: learning-rate schedule, optimiser, checkpoints, resuming, progress."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

Log = Callable[[str], None]


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def save_state(state: dict, path: Path) -> None:
    """torch.save through a temporary file, so that a stop mid-write leaves the last checkpoint whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


class TrainingLog:
    """Logs to run/train.log (and stderr), and draws a bar on a terminal."""

    def __init__(self, run: Path, stage: str, total: int, start: int, log: Log):
        self.file = open(run / "train.log", "a")
        self.stage, self.log, self.losses, self.t0 = stage, log, [], time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=stage, unit="step", file=sys.stderr)

    def note(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()
        if self.bar is None:
            self.log(line)
        else:
            self.bar.write(line, file=sys.stderr)

    def step(self, step: int, loss: float, lr: float, every: int = 25) -> None:
        self.losses.append(loss)
        if self.bar is not None:
            self.bar.update(1)
        if (step + 1) % every == 0:
            per_step = (time.perf_counter() - self.t0) / len(self.losses)
            line = (f"{self.stage} step {step + 1} loss {np.mean(self.losses):.5f} lr {lr:.2e} "
                    f"{per_step:.2f} s/step")
            self.file.write(line + "\n")
            self.file.flush()
            if self.bar is None:
                self.log(line)
            self.losses, self.t0 = [], time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.file.close()


def optimiser(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(list(params), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> float:
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def resume(path: Path, module: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> tuple[int, dict]:
    """Seed the stage, then restore its last checkpoint if there is one: weights, optimiser, RNG.
    Returns the step to continue from and the checkpoint (empty without one)."""
    torch.manual_seed(seed)
    state = load_state(path)
    if state is None:
        return 0, {}
    module.load_state_dict(state["model"])
    opt.load_state_dict(state["optimiser"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), state


def run_steps(stage: str, run: Path, start: int, total: int, stop_after: int | None, checkpoint_every: int,
              step: Callable[[int], tuple[float, float]], save: Callable[[int], None], log: Log,
              phases: Sequence[tuple[int, str]] = ()) -> bool:
    """Run steps `start`..`total - 1` (at most `stop_after` of them); `step(i)` returns (loss, lr) and
    `save(done)` writes a checkpoint, every `checkpoint_every` steps and at the end. `phases`, `(until, line)`
    of consecutive parts of the stage, each get a checkpoint at their end and their line in the log where
    they begin or resume. True when complete."""
    end = total if stop_after is None else min(total, start + stop_after)
    begins = [0] + [until for until, _ in phases[:-1]]
    ends = {until for until, _ in phases}
    record = TrainingLog(run, stage, total, start, log)
    try:
        for i in range(start, end):
            for begin, (until, line) in zip(begins, phases):
                if begin <= i < until and i in (begin, start):
                    record.note(line)
            loss, lr = step(i)
            record.step(i, loss, lr)
            if (i + 1) % checkpoint_every == 0 or i + 1 == total or i + 1 in ends:
                save(i + 1)
    finally:
        record.close()
    return end == total


def device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
