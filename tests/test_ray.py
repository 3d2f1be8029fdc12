"""`vcraft generate --ray` on a real Ray cluster on this machine (the embedded model, small settings): the same
files as a local run, with a worker killed mid-batch and videos that fail by themselves; Ctrl-C.

Skipped where Ray is not installed (`pip install "vcraft[ray]"`), except under VCRAFT_REQUIRE_RAY=1 (CI).
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, one_cpu_thread

from vcraft.app.cli import run

pytestmark = pytest.mark.slow  # a Ray cluster: not in the fast subset

if os.environ.get("VCRAFT_REQUIRE_RAY") != "1":
    pytest.importorskip("ray", reason='Ray is an optional extra: pip install "vcraft[ray]"')

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
           "a yellow circle growing"]
# 8 videos of 8 frames, PNG frames so that files compare exactly.
BATCH = ["--samples", "2", "--seed", "5", "--frames", "8", "--steps", "4", "--format", "png"]
# A cluster of this machine alone, on 127.0.0.1: no token authentication.
RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head node of 2 CPUs, as `ray start` makes one on a cluster's first machine, being started. In the
    foreground (`--block`), so that stopping that one process stops the node's processes."""
    address = f"127.0.0.1:{free_port()}"
    temp = tmp_path_factory.mktemp("ray")
    ray = str(Path(sys.executable).parent / "ray")
    start = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", address.split(":")[1],
             "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false", "--temp-dir", str(temp)]
    log = temp / "start.log"
    with open(log, "w") as out:
        node = subprocess.Popen(start, env=RAY_ENV, stdout=out, stderr=subprocess.STDOUT)
    yield node, address, log
    node.terminate()
    node.wait(timeout=60)


@pytest.fixture(scope="module")
def cluster(head, local_run) -> str:
    """The head node's address once it is up; the local run is made while it starts."""
    node, address, log = head
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        assert node.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return address


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    """The prompts as JSON lines, the second with guidance 1e38: valid, but it overflows to NaN, so its videos fail
    wherever they are rendered."""
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, **({"guidance": 1e38} if i == 1 else {})})
                               for i, p in enumerate(PROMPTS)) + "\n")
    return path


FAILING = {2, 3}  # the second row's two videos


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory) -> Path:
    """A PEFT LoRA of rank 4 on the embedded UNet's query projections, random: the workers must merge it as the
    local run does."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    with safe_open(str(Path(__file__).parents[1] / "checkpoints" / "shapes" / "model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()
                  if k.startswith("model.") and k.endswith("to_q.weight")}
    pairs = {}
    for key, (rows, columns) in shapes.items():
        name = key.removesuffix(".weight")
        pairs[f"{name}.lora_A.weight"] = torch.randn(4, columns, generator=generator) * 0.2
        pairs[f"{name}.lora_B.weight"] = torch.randn(rows, 4, generator=generator) * 0.2
    path = tmp_path_factory.mktemp("lora") / "style.safetensors"
    save_file(pairs, str(path))
    return path


@pytest.fixture(scope="module")
def control_file(tmp_path_factory) -> Path:
    """A control video for the embedded model's adapter: a bright disc crossing the frame diagonally, as PNG frames
    (workers read the same path)."""
    import imageio.v3 as iio
    import numpy as np

    from vcraft.data.shapes import draw

    t = np.arange(8)[:, None, None]
    frames = draw("circle", np.full(3, 0.9), 16 + 4 * t, 16 + 4 * t, np.full((8, 1, 1), 7.0), 0.05, 64)
    folder = tmp_path_factory.mktemp("control") / "diagonal"
    folder.mkdir()
    for i, frame in enumerate(np.round(frames * 255).astype(np.uint8)):
        iio.imwrite(folder / f"{i:02d}.png", frame)
    return folder


@pytest.fixture(scope="module")
def local_run(rows_file, lora_file, control_file, tmp_path_factory) -> Path:
    """The batch made in this process (one thread, as each Ray worker of one CPU has)."""
    out = tmp_path_factory.mktemp("local")
    with one_cpu_thread():
        assert run(["generate", "-f", str(rows_file), *BATCH, "--lora", f"{lora_file}:0.7", "--control-video",
                    str(control_file), "-o", str(out), "-q"]) == 1
    return out


def vcraft(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vcraft", "generate", *args], env=RAY_ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def worker_pids(process: subprocess.Popen, lines: list[str]) -> list[int]:
    """Read stderr until the driver names its workers' process ids."""
    for line in process.stderr:
        lines.append(line)
        found = re.match(r"ray: \d+ workers .*\(pids ([\d, ]+)\)", line)
        if found:
            return [int(p) for p in found.group(1).split(", ")]
    raise AssertionError("".join(lines))


def wait_for_videos(process: subprocess.Popen, lines: list[str], count: int) -> None:
    done = 0
    for line in process.stderr:
        lines.append(line)
        done += bool(re.match(r"\[\d+/\d+\] ", line))
        if done == count:
            return
    raise AssertionError("".join(lines))


def assert_same_videos(made: Path, expected: Path) -> None:
    """Every video folder and sidecar of the local run, the frames identical to the last bit, and nothing
    else (no temporary names)."""
    assert sorted(p.name for p in made.iterdir()) == sorted(p.name for p in expected.iterdir())
    for folder in (p for p in expected.iterdir() if p.is_dir()):
        frames = sorted(p.name for p in folder.iterdir())
        assert len(frames) == 8
        match, mismatch, errors = filecmp.cmpfiles(folder, made / folder.name, frames, shallow=False)
        assert not mismatch and not errors, (folder.name, mismatch, errors)


def test_a_batch_on_two_workers_is_the_local_run_to_the_last_bit_even_when_one_is_killed(cluster, rows_file, lora_file,
                                                                                         control_file, local_run,
                                                                                         tmp_path):
    """8 videos on 2 workers with a LoRA and a control video; after two have finished, one worker's process is
    killed (SIGKILL, as a crash or the out-of-memory killer would): Ray restarts it and renders its video again,
    every video comes out once. The two videos that fail by themselves are reported once each, and the run
    exits 1."""
    out = tmp_path / "out"
    process = vcraft("-f", str(rows_file), *BATCH, "--lora", f"{lora_file}:0.7", "--control-video", str(control_file),
                     "-o", str(out), "--ray", cluster, "--workers", "2", "--json")
    lines: list[str] = []
    pids = worker_pids(process, lines)
    assert "ray: 2 workers of 1 CPU(s) and 0 GPU(s)" in lines[-1]
    wait_for_videos(process, lines, 2)
    os.kill(pids[0], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, "".join(lines) + stderr
    reported = [json.loads(line) for line in stdout.splitlines()]  # nothing but the JSON objects on stdout
    assert sorted(r["path"] for r in reported) == sorted(str(p) for p in out.iterdir() if p.is_dir())  # each once
    failures = re.findall(r"^error: video (\d+) .*failed: .*NaN", "".join(lines) + stderr, re.MULTILINE)
    assert sorted(map(int, failures)) == sorted(FAILING), stderr
    assert re.search(r"^2 of 8 videos failed: (2, 3|3, 2)$", stderr, re.MULTILINE), stderr
    assert_same_videos(out, local_run)
    for sidecar in out.glob("*.json"):
        assert json.loads(sidecar.read_text()) == json.loads((local_run / sidecar.name).read_text())
        assert json.loads(sidecar.read_text())["loras"][0]["scale"] == 0.7
        assert json.loads(sidecar.read_text())["control_video"] == str(control_file.resolve())


def test_ctrl_c_cancels_the_batch_and_leaves_no_partial_file(cluster, prompts_file, tmp_path):
    out = tmp_path / "out"
    process = vcraft("-f", str(prompts_file), *BATCH, "--steps", "12", "-o", str(out), "--ray", cluster,
                     "--workers", "2", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    pids = worker_pids(process, lines)
    wait_for_videos(process, lines, 1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, "".join(lines) + stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted"
    names = [p.name for p in out.iterdir()]
    assert not [n for n in names if n.startswith(".")], names  # no temporary file or folder
    folders = [n for n in names if not n.endswith(".json")]
    assert 1 <= len(folders) < 8 and sorted(names) == sorted([*folders, *(f + ".json" for f in folders)])
    assert all(len(list((out / f).iterdir())) == 8 for f in folders)
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(running(pid) for pid in pids), "the workers were not stopped"


def running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_an_address_where_no_cluster_answers_is_one_error_line(tmp_path):
    """At once: Ray itself would wait minutes there, logging warnings."""
    address = f"127.0.0.1:{free_port()}"
    process = vcraft("a red circle", "--seed", "1", "-o", str(tmp_path / "out"), "--ray", address)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and stdout == ""
    assert stderr.splitlines() == [f"error: --ray {address}: no Ray cluster answers there (give HOST:PORT of its "
                                   "head node, as `ray start --head` prints it)"]
    assert not (tmp_path / "out").exists()
