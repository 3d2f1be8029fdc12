"""`vcraft download` and `vcraft models` against a local server that answers like the Hugging Face Hub
(tests/hub_server.py, reached through HF_ENDPOINT), serving the tiny vc2 checkpoint in the official format as
the preset `tiny-vc2` of a $VCRAFT_PRESETS folder. Downloads run in subprocesses, so that the Hub's
environment variables are read as a user's shell sets them; lookups and generation run in this process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hub_server import COMMIT, FakeHub, serve
from test_cli import one_error_line, tiny, vcraft, vcraft_process

REPO = "test/tiny-vc2"
CHUNK = 10 * 2**20  # huggingface_hub writes what it receives in pieces of this size


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The fake Hub serving the tiny checkpoint, and this process's and its subprocesses' environment set to
    use it with caches in tmp_path."""
    from huggingface_hub import constants
    from omegaconf import OmegaConf

    from vcraft.config import WeightsSource, load_config

    data = (tiny() / "model.ckpt").read_bytes()
    fake = FakeHub({(REPO, "model.ckpt"): data})
    server = serve(fake)
    cfg = load_config(tiny() / "config.yaml")
    cfg.name, cfg.weights = "tiny-vc2", WeightsSource(repo=REPO, size=len(data))
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "tiny-vc2.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    for name, value in {"HF_ENDPOINT": fake.url, "HF_HOME": tmp_path / "hf", "VCRAFT_HOME": tmp_path / "vcraft",
                        "VCRAFT_PRESETS": tmp_path / "presets", "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        monkeypatch.setenv(name, str(value))
    for name in ("VCRAFT_CHECKPOINTS", "HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads the environment once, on import; this process imported it before the test.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", fake.url)
    yield fake
    server.shutdown()


def transfers(fake: FakeHub) -> list[str | None]:
    """The Range header of each GET of the checkpoint (None: from the start)."""
    return [rng for method, path, rng in fake.requests if method == "GET" and "/resolve/" in path]


def models_json() -> dict[str, dict]:
    result = vcraft("models", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["model"]: entry for entry in map(json.loads, result.stdout.splitlines())}


def hub_blobs(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "hf" / "hub").rglob("blobs/*") if not p.name.endswith(".lock")]


GENERATE = ["--model", "tiny-vc2", "--frames", "8", "--height", "64", "--width", "128", "--steps", "2",
            "--device", "cpu", "--seed", "1"]


@pytest.mark.slow
def test_download_verifies_and_converts_then_generation_finds_the_weights_offline(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from vcraft.loaders.checkpoints import SCHEDULE_KEYS, load_state_dict

    assert models_json()["tiny-vc2"]["present"] is False

    result = vcraft_process("download", "tiny-vc2")
    assert result.returncode == 0, result.stderr
    converted = tmp_path / "vcraft" / "models" / "tiny-vc2" / "model.safetensors"
    assert result.stdout.strip() == str(converted) and transfers(hub) == [None]
    original = load_state_dict(tiny() / "model.ckpt")
    stored = load_state_dict(converted)
    assert stored.keys() == original.keys()
    for key, value in original.items():  # the weights in fp16, the schedule buffers as they were
        assert torch.equal(stored[key], value if key in SCHEDULE_KEYS else value.half()), key
    from safetensors import safe_open

    with safe_open(str(converted), "pt") as f:
        assert f.metadata()["source"] == f"{REPO}@{COMMIT}/model.ckpt"
    assert hub_blobs(tmp_path) == []  # the original was removed after the conversion (no --keep-ckpt)
    entry = models_json()["tiny-vc2"]
    assert entry["present"] and entry["source"] == "vcraft cache" and entry["dtype"] == "float16"
    assert entry["path"] == str(converted) and entry["size"] == converted.stat().st_size

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests_before = len(hub.requests)
    made = vcraft("generate", "a red fox", *GENERATE, "-o", tmp_path / "fox.mp4")
    assert made.returncode == 0, made.stderr
    assert json.loads((tmp_path / "fox.json").read_text())["ckpt"] == str(converted)
    assert len(hub.requests) == requests_before  # generation never asks the Hub


@pytest.mark.slow
def test_an_interrupted_transfer_resumes_where_it_broke_off(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    hub.cut_at = CHUNK + 4096  # the connection drops after the first piece was written
    result = vcraft_process("download", "tiny-vc2", "--no-convert")
    assert result.returncode == 0, result.stderr
    assert transfers(hub) == [None, f"bytes={CHUNK}-"]
    cached = Path(result.stdout.strip())
    assert hashlib.sha256(cached.read_bytes()).digest() == hashlib.sha256((tiny() / "model.ckpt").read_bytes()).digest()
    entry = models_json()["tiny-vc2"]
    assert entry["source"] == "Hugging Face cache" and entry["path"] == str(cached) and entry["dtype"] == "float32"

    # A file already in the Hugging Face cache is converted from there, offline, and stays.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    again = vcraft("download", "tiny-vc2")
    assert again.returncode == 0, again.stderr
    assert len(transfers(hub)) == 2 and cached.is_file()
    assert models_json()["tiny-vc2"]["source"] == "vcraft cache"


def test_a_corrupt_download_is_refused_and_removed(hub, tmp_path):
    hub.corrupt = True
    result = vcraft_process("download", "tiny-vc2", "--quiet")
    assert result.returncode == 1 and result.stdout == ""
    assert "is corrupt" in one_error_line(result)
    assert hub_blobs(tmp_path) == [] and not (tmp_path / "vcraft" / "models").exists()


def test_offline_without_the_weights_is_one_error_line_and_writes_nothing(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fetched = vcraft_process("download", "tiny-vc2", "--quiet")
    assert fetched.returncode == 1 and "HF_HUB_OFFLINE" in one_error_line(fetched)

    out = tmp_path / "out" / "fox.mp4"
    made = vcraft("generate", "a red fox", *GENERATE, "-o", out)
    assert made.returncode == 2 and "vcraft download tiny-vc2" in one_error_line(made)
    assert hub.requests == [] and not out.parent.exists() and not (tmp_path / "vcraft" / "models").exists()
    assert hub_blobs(tmp_path) == []


def test_the_list_says_what_each_preset_fetches_and_its_size(hub):
    result = vcraft_process("download", "--list")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert f"{REPO}/model.ckpt" in rows["tiny-vc2"] and "13 MB" in rows["tiny-vc2"]
    assert "VideoCrafter/VideoCrafter2/model.ckpt" in rows["vc2-512"] and "shapes" not in rows


def test_models_without_any_weights_fetched(hub):
    table = vcraft("models")
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    assert rows["tiny-vc2"][1] == "no" and rows["tiny-vc2"][-3:] == ["vcraft", "download", "tiny-vc2"]
    assert rows["shapes"][1] == "yes" and rows["shapes"][5] == "bundled"


@pytest.mark.slow
def test_an_official_lora_is_fetched_once_by_its_name_and_found_by_it_offline(hub, tmp_path, monkeypatch):
    """A preset's official LoRA: `vcraft download NAME` puts it in the Hugging Face cache as it is, `vcraft models`
    shows it with its trigger, and `--lora NAME` finds it there without the network; before the download,
    `--lora NAME` is one error line naming that command."""
    from huggingface_hub import constants
    from omegaconf import OmegaConf

    from vcraft.config import LoRASource, load_config

    data = (tiny("vc0_base") / "lora_unet.ckpt").read_bytes()
    hub.files[(REPO, "loras/style.ckpt")] = data
    cfg = load_config(tiny("vc0_base") / "config.yaml")
    cfg.name, cfg.loras = "tiny-vc0", {"tiny-style": LoRASource(repo=REPO, file="loras/style.ckpt",
                                                                trigger=", tiny style")}
    (tmp_path / "presets" / "tiny-vc0.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    generate = ["generate", "a red fox, tiny style", "--config", tiny("vc0_base") / "config.yaml", "--ckpt",
                tiny("vc0_base") / "model.ckpt", "--frames", "8", "--steps", "2", "--seed", "1"]
    missing = vcraft(*generate, "--lora", "tiny-style", "-o", tmp_path / "early.mp4")
    assert missing.returncode == 2 and "fetch it once with: vcraft download tiny-style" in one_error_line(missing)
    assert not (tmp_path / "early.mp4").exists()

    result = vcraft_process("download", "tiny-style")
    assert result.returncode == 0, result.stderr
    cached = Path(result.stdout.strip())
    assert cached.read_bytes() == data and cached.is_relative_to(tmp_path / "hf")
    entry = models_json()["tiny-style"]
    assert entry["present"] and entry["lora_for"] == "tiny-vc0" and entry["trigger"] == ", tiny style"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    made = vcraft(*generate, "--lora", "tiny-style:0.5", "-o", tmp_path / "fox.mp4")
    assert made.returncode == 0, made.stderr
    recorded = json.loads((tmp_path / "fox.json").read_text())["loras"]
    assert [(entry["path"], entry["scale"]) for entry in recorded] == [(str(cached.resolve()), 0.5)]


@pytest.mark.slow
def test_presets_with_files_of_their_own_fetch_them_all_and_generation_finds_them_offline(hub, tmp_path, monkeypatch):
    """Presets with files of their own: an adapter and a depth estimator (as vc0-256-depth), a LoRA merged when loading
    (as vc2-turbo), a UNet (as vc2-turbo-v2). Before the download a request is one error line naming the command;
    one `vcraft download` fetches every checkpoint and file, and generation then finds them without the network."""
    from huggingface_hub import constants
    from omegaconf import OmegaConf

    from vcraft.config import PartSource, WeightsSource, load_config

    depth, turbo = tiny("vc0_depth"), tiny("vc2_512_turbo")
    files = {"vc0/model.ckpt": tiny("vc0_base") / "model.ckpt", "vc0/adapter.pth": depth / "adapter.pth",
             "vc0/midas.safetensors": depth / "dpt_hybrid_tiny.safetensors",
             "vc2/model.ckpt": tiny("vc2_512") / "model.ckpt", "turbo/unet_lora.pt": turbo / "unet_lora.pt",
             "turbo/unet_mg.pt": turbo / "unet_mg.pt"}
    hub.files.update({(REPO, name): path.read_bytes() for name, path in files.items()})
    presets = {
        "tiny-vc0-depth": (load_config(depth / "config.yaml"), "vc0/model.ckpt",
                           {"adapter": "vc0/adapter.pth", "depth_estimator": "vc0/midas.safetensors"}),
        "tiny-turbo": (load_config(turbo / "config.yaml", ["model.unet.guidance_embedding=256"]), "vc2/model.ckpt",
                       {}),
        "tiny-turbo-v2": (load_config(turbo / "config.yaml", ["model.unet.guidance_embedding=256",
                                                              "model.unet.motion_embedding=256"]), "vc2/model.ckpt",
                          {"unet": "turbo/unet_mg.pt"})}
    for name, (cfg, weights, parts) in presets.items():
        cfg.name, cfg.weights = name, WeightsSource(repo=REPO, file=weights)
        cfg.parts = {part: PartSource(repo=REPO, file=file) for part, file in parts.items()}
        cfg.lora = PartSource(repo=REPO, file="turbo/unet_lora.pt") if name == "tiny-turbo" else None
        (tmp_path / "presets" / f"{name}.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    generate = {"tiny-vc0-depth": ["--control-video", depth / "control.mp4"], "tiny-turbo": [], "tiny-turbo-v2": []}
    common = ["a red fox", "--frames", "8", "--height", "64", "--width", "64", "--steps", "2", "--seed", "1", "-q"]
    missing = vcraft("generate", *common, "--model", "tiny-vc0-depth", *generate["tiny-vc0-depth"],
                     "-o", tmp_path / "early.mp4")
    assert missing.returncode == 2 and "vcraft download tiny-vc0-depth" in one_error_line(missing)
    assert not (tmp_path / "early.mp4").exists()

    result = vcraft_process("download", *presets)
    assert result.returncode == 0, result.stderr
    fetched = {path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path}
    assert all(any(path.endswith(name) for path in fetched) for name in files), fetched

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    videos = {}
    for name, extra in generate.items():
        made = vcraft("generate", *common, "--model", name, *extra, "-o", tmp_path / f"{name}.mp4")
        assert made.returncode == 0, made.stderr
        videos[name] = iio.imread(tmp_path / f"{name}.mp4")
    assert json.loads((tmp_path / "tiny-vc0-depth.json").read_text())["control_video"] == str(
        (depth / "control.mp4").resolve())
    assert json.loads((tmp_path / "tiny-turbo-v2.json").read_text())["sampler"] == "consistency"
    assert not np.array_equal(videos["tiny-turbo"], videos["tiny-turbo-v2"])
