"""The `vcraft` command on the tiny official-format fixtures: in-process through `vcraft.app.cli.run` (what
the installed command calls), and in a real subprocess where the process itself matters (Ctrl-C, imports)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import reference_dir

FOX = "a red fox running through snow"


def vcraft(*args: str, cwd: Path | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    """The command run in this process, with its stdin, stdout, stderr and working folder."""
    from vcraft.app.cli import run

    argv = [str(a) for a in args]
    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    saved_stdin = sys.stdin
    try:
        sys.stdin = io.StringIO(stdin)
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(argv)
    finally:
        os.chdir(before)
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def vcraft_process(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The command in a subprocess of its own."""
    return subprocess.run([sys.executable, "-m", "vcraft", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, input=stdin, timeout=300)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The command's stderr, which must be a single `error: ...` line and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def tiny(variant: str = "vc2_512") -> Path:
    return reference_dir() / "tiny" / variant


def small_video_args(variant: str = "vc2_512", ckpt: str = "model.ckpt") -> list[str]:
    """A tiny fixture's video, small and in 2 sampler steps: the commands that use it are checked for their files,
    records and equalities, and for differences far above 1 level (seeds, pictures), not for what is drawn."""
    root = tiny(variant)
    return ["--config", root / "config.yaml", "--ckpt", root / ckpt, "--frames", "8", "--height", "64",
            "--width", "128", "--steps", "2", "--guidance", "12", "--eta", "0", "--fps", "8", "--device", "cpu"]


def read_pngs(folder: Path) -> np.ndarray:
    import imageio.v3 as iio

    files = sorted(folder.glob("*.png"))
    return np.stack([iio.imread(f) for f in files])


def test_png_frames_are_deterministic_per_seed(tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / name
        result = vcraft("generate", FOX, *small_video_args(), "--seed", seed, "--format", "png", "-o", out)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(out)
        runs[name] = read_pngs(out)
    assert runs["a"].shape == (8, 64, 128, 3) and runs["a"].dtype == np.uint8
    assert np.array_equal(runs["a"], runs["b"])
    assert np.abs(runs["a"].astype(int) - runs["c"].astype(int)).mean() > 1.0
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["seed"] == 3 and meta["prompt"] == FOX and meta["frames"] == 8 and meta["guidance"] == 12.0


def test_cli_frames_equal_python_api(tmp_path):
    """The command and `TextToVideo` make the same pixels for the same seed and settings."""
    from vcraft import TextToVideo

    out = tmp_path / "frames"
    result = vcraft("generate", FOX, *small_video_args("vc1_1024"), "--seed", 7, "--format", "png", "-o", out)
    assert result.returncode == 0, result.stderr
    pipe = TextToVideo.from_pretrained(str(tiny("vc1_1024") / "config.yaml"), tiny("vc1_1024") / "model.ckpt",
                                       device="cpu")
    video = pipe(FOX, seed=7, frames=8, height=64, width=128, steps=2, guidance=12.0, eta=0.0, fps=8)
    assert np.array_equal(read_pngs(out), video)


def test_mp4_output_and_multiple_prompts(tmp_path):
    import imageio.v3 as iio

    result = vcraft("generate", FOX, "a blue whale", *small_video_args(ckpt="model.safetensors"),
                    "--steps", "3", "--eta", "1", "--seed", 10, "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    paths = [Path(p) for p in result.stdout.split()]
    assert [p.name for p in paths] == ["0000-a-red-fox-running-through-snow-10.mp4", "0001-a-blue-whale-11.mp4"]
    for path in paths:
        frames = iio.imread(path, index=None)
        assert frames.shape == (8, 64, 128, 3)
        assert json.loads(path.with_suffix(".json").read_text())["eta"] == 1.0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.slow
def test_convert_fp16_then_info_and_generate(tmp_path):
    target = tmp_path / "tiny.safetensors"
    result = vcraft("convert", tiny() / "model.ckpt", target, "--dtype", "fp16")
    assert result.returncode == 0, result.stderr
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by others as any new file is
    info = vcraft("info", target, "--json")
    assert info.returncode == 0, info.stderr
    facts = json.loads(info.stdout)
    assert facts["dtype"] == "float16"
    assert facts["unet_parameters"] == 1911748 and facts["text_encoder_parameters"] == 801889
    again = vcraft("convert", tiny() / "model.ckpt", target)
    assert again.returncode == 2 and "already exists" in again.stderr
    out = tmp_path / "fp16"
    gen = vcraft("generate", FOX, *small_video_args(), "--ckpt", target, "--seed", 3, "--format", "png", "-o", out)
    assert gen.returncode == 0, gen.stderr
    assert read_pngs(out).shape == (8, 64, 128, 3)


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    import os

    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Payload()}, path)


def _error_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp / "corrupt.ckpt"
    corrupt.write_bytes((tiny() / "model.ckpt").read_bytes()[:4000])
    _malicious_checkpoint(tmp / "evil.ckpt", tmp / "pwned")
    base = small_video_args()
    return {
        "missing checkpoint": ([*base, "--ckpt", tmp / "nope.ckpt"], "checkpoint not found"),
        "corrupt checkpoint": ([*base, "--ckpt", corrupt], "cannot read"),
        "mismatched checkpoint": ([*base, "--config", tiny("vc1_512") / "config.yaml"], "does not fit"),
        "pickle with code": ([*base, "--ckpt", tmp / "evil.ckpt"], "refusing to load"),
        "preset without weights": (["--model", "vc2-512"], "vcraft download vc2-512"),
        "bad height": ([*base, "--height", "100"], "--height must be"),
        "bad option": ([*base, "--bogus"], "No such option"),
        "unknown preset": (["--model", "nope"], "unknown model"),
        "both model and config": ([*base, "--model", "vc2-512"], "not both"),
    }


@pytest.mark.parametrize("case", [
    "missing checkpoint", "corrupt checkpoint", "mismatched checkpoint", "pickle with code",
    "preset without weights", "bad height", "bad option", "unknown preset", "both model and config"])
def test_bad_input_is_one_error_line(tmp_path, monkeypatch, case):
    from huggingface_hub import constants

    from vcraft.loaders import weights

    # Weights are looked for in empty folders only, whatever this machine has in its caches and checkpoints/.
    monkeypatch.delenv("VCRAFT_CHECKPOINTS", raising=False)
    monkeypatch.setenv("VCRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(weights, "preset_dir", lambda: tmp_path / "configs")
    args, expected = _error_cases(tmp_path)[case]
    out = tmp_path / "out.mp4"
    result = vcraft("generate", FOX, *args, "--seed", 1, "-o", out)
    assert result.returncode == 2, result.stderr
    assert expected in one_error_line(result) and result.stdout == ""
    assert not out.exists() and not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_a_generation_imports_neither_open_clip_nor_ray(tmp_path):
    """open_clip imports torchvision and torch._dynamo, seconds of every command's start-up; Ray is an optional
    extra that only --ray uses."""
    argv = ["generate", "a red circle", "--frames", "8", "--steps", "2", "-o", str(tmp_path / "a.mp4")]
    code = (
        "import sys\n"
        "from vcraft.app.cli import run\n"
        f"assert run({argv!r}) == 0\n"
        "heavy = [m for m in ('open_clip', 'torchvision', 'torch._dynamo', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_the_optional_extras_their_commands_are_one_error_line(monkeypatch, tmp_path):
    for extra in ("ray", "gradio"):  # what `import ray` does where it is not installed
        monkeypatch.setitem(sys.modules, extra, None)
    result = vcraft("ui", "-o", tmp_path / "ui")
    assert result.returncode == 2 and result.stdout == ""
    assert one_error_line(result) == 'error: vcraft ui needs Gradio, an optional extra: pip install "vcraft[ui]"'
    cases = {"--ray needs Ray, an optional extra: pip install \"vcraft[ray]\"": ["--ray", "local", "-o", tmp_path],
             "size a Ray pool; add --ray": ["--workers", "2", "-o", tmp_path],
             "--ray writes videos to files; give -o a file or folder, not -": ["--ray", "local", "-o", "-"]}
    for expected, args in cases.items():
        result = vcraft("generate", "a red circle", *args)
        assert result.returncode == 2 and expected in one_error_line(result) and result.stdout == ""
    assert not any(tmp_path.iterdir())


def test_help_imports_nothing_heavier_than_typer():
    code = ("import sys; from vcraft.app.cli import app; heavy = {'torch', 'numpy', 'omegaconf'} & set(sys.modules); "
            "assert not heavy, heavy")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert vcraft_process("--help").returncode == 0


def test_safetensors_reader_matches_the_library_and_refuses_damaged_files(tmp_path):
    """vcraft reads safetensors itself (each tensor in its own memory, see checkpoints._read_safetensors)."""
    import torch
    from safetensors.torch import load_file, save_file

    from vcraft.errors import VcraftError
    from vcraft.loaders.checkpoints import load_state_dict

    tensors = {"f16": torch.randn(3, 4).half(), "bf16": torch.randn(5).bfloat16(), "f32": torch.randn(2, 2, 2),
               "i64": torch.tensor(3), "empty": torch.zeros(0, 4), "bool": torch.tensor([True, False])}
    good = tmp_path / "good.safetensors"
    save_file(tensors, good, metadata={"format": "vcraft"})
    ours, theirs = load_state_dict(good), load_file(good)
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in theirs)

    raw = good.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    header["f32"]["shape"] = [10**6, 10**6]  # asks for 4 TB: refused before allocating
    huge = json.dumps(header).encode()
    damaged = {"truncated": raw[:-3], "garbage": b"not a safetensors file at all",
               "huge": len(huge).to_bytes(8, "little") + huge + raw[8 + length:]}
    for name, data in damaged.items():
        (tmp_path / f"{name}.safetensors").write_bytes(data)
        with pytest.raises(VcraftError, match="not a valid safetensors file"):
            load_state_dict(tmp_path / f"{name}.safetensors")
