import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
if "PYTEST_XDIST_WORKER" in os.environ:
    # One worker per core (pyproject.toml): one thread each, read when torch is imported and by the commands the
    # tests start, or the workers' thread pools fight over the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files whose tests are mostly marked slow first (ties in path order). `--dist loadfile` (pyproject.toml) hands
    whole files to the workers in this order, so the long ones start early and the short ones even out the end."""
    counts: dict[Path, list[int]] = {}
    for item in items:
        slow_and_all = counts.setdefault(item.path, [0, 0])
        slow_and_all[0] += item.get_closest_marker("slow") is not None
        slow_and_all[1] += 1
    items.sort(key=lambda item: -counts[item.path][0] / counts[item.path][1])  # stable: a file's tests stay in order


@pytest.fixture(scope="session")
def shapes_pipe():
    """The embedded model (with its autoencoder's encoder, for continuing videos), loaded once for the whole run."""
    from vcraft import TextToVideo

    return TextToVideo.from_pretrained("shapes", device="cpu", encoder=True)


@pytest.fixture(scope="session")
def render(shapes_pipe):
    """`render(prompt, **settings)`: the embedded model's video as uint8 `[T, H, W, 3]`, made once per run for
    the same prompt and settings, so that tests reading the same video share it. Made with one CPU thread, as
    the recorded hashes were (tests/test_shapes_model.py)."""
    made = {}

    def video(prompt: str, **settings):
        import numpy as np

        key = (prompt, tuple(sorted((k, id(v) if isinstance(v, np.ndarray) else v) for k, v in settings.items())))
        if key not in made:
            with one_cpu_thread():
                made[key] = shapes_pipe(prompt, **settings)
            made[key].flags.writeable = False
        return made[key]

    return video


@contextmanager
def one_cpu_thread():
    """torch on one CPU thread: several threads split sums in another order, which changes the last bits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a test's server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
