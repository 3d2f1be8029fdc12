"""Rendering a run's videos on a Ray cluster (`vcraft generate --ray`).

Workers are long-lived Ray actors, each loading the model once and rendering one video at a time with
render.render, so a video's file is the one a local run writes. Actors rather than Ray Data's actor pool: the
unit of work is one video whose outcome the driver reports as it completes, a failed video must not fail the
run, and cancelling must reach the video being rendered; plain actors give each of those directly.

Faults are Ray's to handle: an actor whose process or node dies is restarted (`max_restarts`) and the video it
was rendering is sent to it again (`max_task_retries`), a bounded number of times. A video that fails by itself
(NaN, bad settings) comes back as an outcome with an error and is not retried. Ctrl-C cancels the videos being
rendered (Ray's cancellation flag, read between denoising steps), waits for the workers to clean up and stops
them; leftover temporary files of workers that died are removed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections import deque
from typing import Callable, Iterator

from vcraft.app.batch import Video
from vcraft.app.options import Pool
from vcraft.app.render import Job, Outcome
from vcraft.app.video import remove_partials
from vcraft.errors import VcraftError

RESTARTS = 3  # times a worker is restarted, and a video sent again, after its process or node died
CLEANUP_S = 60.0  # how long cancelled workers get to remove their temporary files


def import_ray():
    try:
        import ray
    except ImportError:
        raise VcraftError('--ray needs Ray, an optional extra: pip install "vcraft[ray]"') from None
    return ray


class Worker:
    """One Ray actor: the model, loaded once, and the videos given to it one at a time."""

    def __init__(self, job: Job):
        import torch

        from vcraft.app.render import load

        torch.set_num_threads(job.options.pool.cpus)
        self.job = job
        self.pipe = load(job)

    def pid(self) -> int:
        return os.getpid()

    def render(self, video: Video) -> Outcome:
        import ray

        from vcraft.app.render import Stopped, render

        context = ray.get_runtime_context()

        def stop_when_cancelled(*_):  # a progress callback: (step, total)
            if context.is_canceled():
                raise Stopped()

        return render(self.pipe, self.job, video, stop_when_cancelled)


def _connect(ray, address: str) -> None:
    """Join a cluster, or start a Ray instance of this run's own (`local`)."""
    host, _, port = address.rpartition(":")
    if address not in ("auto", "local") and "://" not in address:
        # Ray itself waits minutes for an address where nothing listens, logging a warning every few seconds.
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except (OSError, ValueError):
            raise VcraftError(f"--ray {address}: no Ray cluster answers there (give HOST:PORT of its head node, "
                              "as `ray start --head` prints it)") from None
    quiet = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as exc:
        where = "RAY_ADDRESS or a running cluster" if address == "auto" else address
        raise VcraftError(f"--ray {address}: no Ray cluster at {where} ({exc}); start one with `ray start "
                          "--head`, or use --ray local") from None


def _sizes(ray, pool: Pool) -> tuple[int, float]:
    """Workers and GPUs per worker, from the options or from what the cluster has."""
    have = ray.cluster_resources()
    gpus = pool.gpus if pool.gpus is not None else (1.0 if have.get("GPU", 0) >= 1 else 0.0)
    if pool.workers is not None:
        return pool.workers, gpus
    fits = int(have.get("CPU", 1) // pool.cpus)
    if gpus:
        fits = min(fits, int(have.get("GPU", 0) // gpus))
    if fits < 1:
        raise VcraftError(f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs: not "
                          f"enough for one worker of {pool.cpus} CPUs and {gpus:g} GPUs")
    return fits, gpus


def render_on_ray(job: Job, videos: list[Video], log: Callable[[str], None]) -> Iterator[Outcome]:
    """Render `videos` on the Ray workers of `job.options.pool`; yields each video's outcome as it completes."""
    ray = import_ray()
    # Ray prints its workers' errors on stdout, which carries only the run's paths or JSON: they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        yield from _render(ray, job, videos, job.options.pool, log)


def _render(ray, job: Job, videos: list[Video], pool: Pool, log: Callable[[str], None]) -> Iterator[Outcome]:
    _connect(ray, pool.address)
    actors: list = []
    running: dict = {}  # object ref -> (actor, video)
    try:
        count, gpus = _sizes(ray, pool)
        actor_class = ray.remote(num_cpus=pool.cpus, num_gpus=gpus, max_restarts=RESTARTS,
                                 max_task_retries=RESTARTS)(Worker)
        actors = [actor_class.remote(job) for _ in range(min(count, len(videos)))]
        pids = ray.get([a.pid.remote() for a in actors])
        log(f"ray: {len(actors)} workers of {pool.cpus} CPU(s) and {gpus:g} GPU(s) (pids {', '.join(map(str, pids))})")
        waiting, idle = deque(videos), list(actors)
        while waiting or running:
            while idle and waiting:
                actor = idle.pop()
                video = waiting.popleft()
                running[actor.render.remote(video)] = (actor, video)
            if not running:  # every worker is gone for good
                for video in waiting:
                    yield Outcome(video, 0.0, "no Ray worker left to render it")
                return
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, video = running.pop(ref)
            try:
                outcome = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayActorError as exc:  # died more often than it may be restarted
                outcome = Outcome(video, 0.0, f"its Ray worker died {RESTARTS + 1} times ({str(exc).splitlines()[0]})")
            yield outcome
    finally:
        _stop(ray, actors, running)
        remove_partials(v.path for v in videos)
        ray.shutdown()  # stops a Ray instance of this run's own; otherwise leaves the cluster


def _stop(ray, actors: list, running: dict) -> None:
    """Cancel the videos still being rendered, let their workers clean up, then end the workers."""
    for ref in running:
        ray.cancel(ref)
    # An actor runs one call at a time, so its answer comes after the cancelled render has cleaned up.
    pings = [actor.pid.remote() for actor, _ in running.values()]
    ray.wait(pings, num_returns=len(pings), timeout=CLEANUP_S)
    for actor in actors:
        ray.kill(actor)
