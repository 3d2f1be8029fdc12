"""Batch rendering through the `vcraft` command with the default model: prompt sources, JSON lines, resume
after an interrupt, --from, -o -, and one clear error for every bad input. In-process (`vcraft.app.cli.run`),
except where the process itself is tested (stdin, stdout bytes, exit codes)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import one_error_line, read_pngs, vcraft, vcraft_process

# The default model, few steps and frames, on the CPU whatever the machine has: these tests are about the plumbing.
# 2 steps, at t = 501 and 1: the preset's guidance interval (t >= 600) guides neither, --guidance-min-t 0 both.
FAST = ["--steps", "2", "--seed", "3", "--frames", "8", "--device", "cpu"]


def run(*args, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return vcraft("generate", *args, stdin=stdin, cwd=cwd)


def test_stdin_in_json_lines_out(tmp_path):
    result = run("-", *FAST, "--json", "-o", tmp_path, stdin="a red circle moving left\n\na blue square moving up\n")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["prompt"], r["seed"], r["frames"], r["size"]) for r in lines] == [
        ("a red circle moving left", 3, 8, [64, 64]), ("a blue square moving up", 4, 8, [64, 64])]
    assert all(Path(r["path"]).is_file() and r["seconds"] > 0 for r in lines)
    assert Path(lines[0]["path"]).name == "0000-a-red-circle-moving-left-3.mp4"


def test_prompt_files_with_per_video_settings(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red circle moving left", "seed": 40, "frames": 4}\n'
                                      '{"prompt": "a green square growing", "name": "green-{seed}", "steps": 2}\n')
    (tmp_path / "p.csv").write_text("prompt,seed,fps\na white circle shrinking,7,4\n")
    (tmp_path / "p.txt").write_text("# one prompt a line\n\nan orange square moving right\n")
    result = run("-f", tmp_path / "p.jsonl", *FAST, "--format", "png", "-o", tmp_path / "a")
    assert result.returncode == 0, result.stderr
    first, second = map(Path, result.stdout.split())
    assert first.name == "0000-a-red-circle-moving-left-40" and second.name == "green-4"
    assert read_pngs(first).shape == (4, 64, 64, 3) and read_pngs(second).shape == (8, 64, 64, 3)
    assert json.loads(second.with_name("green-4.json").read_text())["steps"] == 2
    result = run("-f", tmp_path / "p.csv", *FAST, "--samples", "2", "-o", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    paths = [Path(p) for p in result.stdout.split()]
    assert [p.name for p in paths] == ["0000-a-white-circle-shrinking-7.mp4", "0001-a-white-circle-shrinking-8.mp4"]
    assert json.loads(paths[1].with_suffix(".json").read_text())["fps"] == 4
    result = run("-f", tmp_path / "p.txt", *FAST, "--frames", "4", "-o", tmp_path / "c")
    assert result.returncode == 0, result.stderr
    assert json.loads(Path(result.stdout.strip()).with_suffix(".json").read_text())["prompt"] == \
        "an orange square moving right"


@pytest.mark.slow
def test_interrupted_batch_resumes_with_skip_existing(tmp_path, monkeypatch):
    """Ctrl-C while the second video is being written (raised after its first frames reach the temporary
    file): exit 130, the first video kept, nothing of the second; the same command with --skip-existing then
    makes the other two, the same as an uninterrupted run."""
    from vcraft.pipeline.api import TextToVideo

    prompts = ["a red circle moving left", "a blue triangle moving down", "a green square growing"]
    args = [*prompts, *FAST, "--format", "png", "-o", tmp_path / "run"]
    real, calls = TextToVideo.stream, []

    def interrupted(self, settings, callback=None):
        calls.append(settings)
        if len(calls) == 2:
            yield from itertools.islice(real(self, settings, callback), 1)
            raise KeyboardInterrupt
        yield from real(self, settings, callback)

    monkeypatch.setattr(TextToVideo, "stream", interrupted)
    result = run(*args)
    assert result.returncode == 130 and result.stderr.strip().splitlines()[-1] == "error: interrupted"
    first = Path(result.stdout.strip())
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [first.name, first.name + ".json"]
    monkeypatch.setattr(TextToVideo, "stream", real)
    again = run(*args, "--skip-existing")
    assert again.returncode == 0, again.stderr
    assert "skipping 1 video" in again.stderr and len(again.stdout.split()) == 2
    whole = run(*args[:-1], tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    for name in ("0000-a-red-circle-moving-left-3", "0001-a-blue-triangle-moving-down-4",
                 "0002-a-green-square-growing-5"):
        assert np.array_equal(read_pngs(tmp_path / "run" / name), read_pngs(tmp_path / "whole" / name))


def test_a_failed_video_is_reported_and_the_batch_goes_on(tmp_path):
    """A guidance scale so large that the latents overflow (guided at every step) fails its video (NaN), not
    the run."""
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red circle moving left", "guidance": 1e38}\n'
                                      '{"prompt": "a blue circle moving left"}\n')
    result = run("-f", tmp_path / "p.jsonl", *FAST, "--guidance-min-t", "0", "-o", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    assert [Path(p).name for p in result.stdout.split()] == ["0001-a-blue-circle-moving-left-4.mp4"]
    assert "error: video 0 ('a red circle moving left') failed: FloatingPointError" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "1 of 2 videos failed: 0"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0001-a-blue-circle-moving-left-4.json",
                                                                   "0001-a-blue-circle-moving-left-4.mp4"]


def test_from_sidecar_makes_the_same_video(tmp_path):
    result = run("a yellow circle moving right", *FAST, "--guidance", "3", "--format", "png",
                 "-o", tmp_path / "one")
    assert result.returncode == 0, result.stderr
    again = run("--from", tmp_path / "one.json", "-o", tmp_path / "two")
    assert again.returncode == 0, again.stderr
    assert np.array_equal(read_pngs(tmp_path / "one"), read_pngs(tmp_path / "two"))
    assert json.loads((tmp_path / "two.json").read_text())["guidance"] == 3


@pytest.fixture(scope="module")
def yellow(tmp_path_factory) -> Path:
    """The two videos the guidance-interval tests below compare with, made once: "a yellow circle moving right" at
    FAST settings as PNG frames, guided at the preset's interval (`new`, with its sidecar) and at every step
    (`every`, --guidance-min-t 0). The tests only read them."""
    folder = tmp_path_factory.mktemp("yellow")
    args = ["a yellow circle moving right", *FAST, "--format", "png"]
    assert run(*args, "-o", folder / "new").returncode == 0
    assert run(*args, "--guidance-min-t", "0", "-o", folder / "every").returncode == 0
    return folder


def test_a_sidecar_from_before_the_guidance_interval_is_guided_at_every_step(tmp_path, yellow):
    old = json.loads((yellow / "new.json").read_text())
    assert old.pop("guidance_min_t") == 600  # the preset's
    (tmp_path / "old.json").write_text(json.dumps(old))
    again = run("--from", tmp_path / "old.json", "-o", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert np.array_equal(read_pngs(tmp_path / "again"), read_pngs(yellow / "every"))
    assert not np.array_equal(read_pngs(tmp_path / "again"), read_pngs(yellow / "new"))


def test_a_row_sets_its_own_guidance_interval(tmp_path, yellow):
    """A prompt-file row's guidance_min_t is its video's: the same video as asking for it on the command line
    (`every`), not the preset's (`new`)."""
    args = [*FAST, "--format", "png"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a yellow circle moving right", "guidance_min_t": 0}\n')
    assert run("-f", tmp_path / "p.jsonl", *args, "-o", tmp_path / "row").returncode == 0
    assert json.loads((tmp_path / "row.json").read_text())["guidance_min_t"] == 0
    assert np.array_equal(read_pngs(tmp_path / "row"), read_pngs(yellow / "every"))
    assert not np.array_equal(read_pngs(tmp_path / "row"), read_pngs(yellow / "new"))


def test_bad_input_exits_2_from_a_real_process(tmp_path):
    result = vcraft_process("generate", "a red circle", "--frames", "0", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == "error: --frames must be at least 1, got 0\n"
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_prompt_on_stdin_to_a_browser_mp4_on_stdout(tmp_path):
    """The real command in a process of its own, as a pipeline runs it: the prompt from stdin, the default
    model, the video's bytes on stdout: H.264 in yuv420p (what browsers play), 16 frames with one
    object on a dark background; nothing written to the working folder."""
    # 4 steps: the object on its dark background is already there (16 frames, the model's default).
    command = [sys.executable, "-m", "vcraft", "generate", "-", "--seed", "1", "--steps", "4", "--device", "cpu",
               "-o", "-", "-q"]
    data = subprocess.run(command, input=b"a yellow square moving up\n", capture_output=True, timeout=300,
                          cwd=tmp_path)
    assert data.returncode == 0, data.stderr
    assert data.stdout[4:8] == b"ftyp" and list(tmp_path.iterdir()) == []
    import imageio.v3 as iio
    import imageio_ffmpeg

    from vcraft.data.measure import object_masks

    out = tmp_path / "piped.mp4"
    out.write_bytes(data.stdout)
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out)], capture_output=True,
                           text=True)
    stream = next(line for line in probe.stderr.splitlines() if "Video:" in line)
    assert "h264" in stream and "yuv420p" in stream, stream
    frames = iio.imread(out, index=None).astype(np.float32) / 255
    assert frames.shape == (16, 64, 64, 3)
    covered = object_masks(frames).mean(axis=(1, 2))
    assert (np.median(frames, axis=(1, 2)).max() < 0.2) and (0.005 < covered).all() and (covered < 0.5).all(), covered


def _bad_files(tmp: Path) -> None:
    (tmp / "empty.txt").write_text("")
    (tmp / "comments.txt").write_text("# nothing\n\n")
    (tmp / "latin1.txt").write_bytes(b"caf\xe9\n")
    (tmp / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    (tmp / "nocol.csv").write_text("text\na fox\n")
    (tmp / "badrow.jsonl").write_text('{"prompt": "a", "frames": 0}\n')
    (tmp / "badmin.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b", "guidance_min_t": 1001}\n')
    (tmp / "broken.yaml").write_text("model: [unclosed\n")
    (tmp / "file").write_text("x")
    (tmp / "not-a-sidecar.json").write_text("{}")
    (tmp / "badcol.jsonl").write_text('{"prompt": "a", "colour": "red"}\n')


P = "a red circle"
# name: (arguments, with {tmp} for the folder of bad files; what the error line must say)
BAD_INPUTS = {
    "frames 0": ([P, "--frames", "0"], "--frames must be at least 1"),
    "height not a multiple": ([P, "--height", "70"], "--height must be a positive multiple of 16"),
    "width not a multiple": ([P, "--width", "30"], "--width must be a positive multiple of 16"),
    "height too large": ([P, "--height", "65536"], "--height must be at most"),
    "steps 0": ([P, "--steps", "0"], "--steps must be between 1 and 1000"),
    "steps too many": ([P, "--steps", "5000"], "--steps must be between 1 and 1000"),
    "negative guidance": ([P, "--guidance", "-1"], "--guidance must be"),
    "guidance nan": ([P, "--guidance", "nan"], "--guidance must be"),
    "guidance min t too large": ([P, "--guidance-min-t", "1001"], "--guidance-min-t must be between 0 and 1000"),
    "guidance min t negative": ([P, "--guidance-min-t", "-1"], "--guidance-min-t must be between 0 and 1000"),
    "negative eta": ([P, "--eta", "-0.5"], "--eta must be 0 or more"),
    "fps 0": ([P, "--fps", "0"], "--fps must be at least 1"),
    "save fps 0": ([P, "--save-fps", "0"], "--save-fps must be positive"),
    "unknown device": ([P, "--device", "tpu"], "unknown device"),
    "cuda absent": ([P, "--device", "cuda"], "no CUDA GPU is available"),
    "unknown dtype": ([P, "--dtype", "fp8"], "unknown dtype"),
    "unknown offload": ([P, "--offload", "disk"], "unknown --offload"),
    "unknown format": ([P, "--format", "avi"], "avi"),
    "output is a file": ([P, "b", "-o", "{tmp}/file"], "is a file"),
    "extension mismatch": ([P, "-o", "{tmp}/x.gif", "--format", "mp4"], "does not match --format"),
    "one file for two videos": ([P, "b", "-o", "{tmp}/x.mp4"], "names one file but 2 videos"),
    "stdout for two videos": ([P, "b", "-o", "-"], "-o - writes one"),
    "stdout png": ([P, "-o", "-", "--format", "png"], "-o - writes one"),
    "empty prompt": (["  "], "a prompt is empty"),
    "no prompt": ([], "no prompt given"),
    "empty prompts file": (["-f", "{tmp}/empty.txt"], "no prompts in it"),
    "only comments": (["-f", "{tmp}/comments.txt"], "no prompts in it"),
    "not utf-8": (["-f", "{tmp}/latin1.txt"], "not UTF-8"),
    "broken json": (["-f", "{tmp}/broken.jsonl"], "broken.jsonl:2: not valid JSON"),
    "missing column": (["-f", "{tmp}/nocol.csv"], "no 'prompt' column"),
    "bad row setting": (["-f", "{tmp}/badrow.jsonl"], "badrow.jsonl:1: --frames must be at least 1"),
    "bad row guidance interval": (["-f", "{tmp}/badmin.jsonl"],
                                  "badmin.jsonl:2: --guidance-min-t must be between 0 and 1000"),
    "missing prompts file": (["-f", "{tmp}/nope.txt"], "prompt file not found"),
    "missing config": ([P, "--config", "{tmp}/nope.yaml"], "not found"),
    "broken config": ([P, "--config", "{tmp}/broken.yaml"], "broken.yaml"),
    "missing checkpoint": ([P, "--ckpt", "{tmp}/nope.safetensors"], "checkpoint not found"),
    "bad samples": ([P, "--samples", "0"], "--samples must be at least 1"),
    "output not writable": ([P, "-o", "/proc/vcraft/out.mp4"], "cannot write videos to /proc/vcraft"),
    "folder under a file": ([P, "b", "-o", "{tmp}/file/videos"], "cannot write videos to"),
    "row sets an unknown column": (["-f", "{tmp}/badcol.jsonl"], "badcol.jsonl:1: unknown column 'colour'"),
    "overwrite and skip": ([P, "--overwrite", "--skip-existing"], "not both"),
    "bad name template": ([P, "--name", "{{colour}}"], "bad name template"),
    "name with a slash": ([P, "--name", "a/b"], "is not a file name"),
    "duplicate names": ([P, "--samples", "2", "--name", "same"], "would be written twice"),
    "bad from file": (["--from", "{tmp}/not-a-sidecar.json"], "not a vcraft JSON sidecar"),
    "missing from file": (["--from", "{tmp}/nope.json"], "--from: file not found"),
    "bad overlap": ([P, "--frames", "40", "--overlap", "16"], "--overlap must be between 1 and 15"),
    "bad extend": ([P, "--extend", "blend"], "--extend must be one of mask, replace, freenoise"),
    "negative seed": ([P, "--seed", "-1"], "Invalid value for '--seed'"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_line_and_nothing_written(tmp_path, case):
    if case == "cuda absent":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA GPU, so --device cuda is not bad input here")
    bad = tmp_path / "bad"
    bad.mkdir()
    _bad_files(bad)
    before = sorted(bad.iterdir())
    args, message = BAD_INPUTS[case]
    work = tmp_path / "work"
    work.mkdir()
    result = run(*[a.format(tmp=bad) for a in args], cwd=work, stdin="")
    assert result.returncode == 2, result.stderr
    assert message in one_error_line(result) and result.stdout == ""
    assert list(work.iterdir()) == [] and sorted(bad.iterdir()) == before  # nothing written anywhere
