"""Long videos through the command line: FreeNoise (`--extend freenoise`) and prompts that change along a video
(`--then`, prompt files' "prompts"/"at", FreeNoise's `A;B` files), their sidecars, and the bad schedules."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_cli import one_error_line, read_pngs, tiny, vcraft

from vcraft.data.measure import measure_colour, object_masks

FREENOISE = ["--frames", "32", "--height", "64", "--width", "128", "--steps", "10", "--guidance", "12", "--eta", "0",
             "--fps", "16", "--device", "cpu", "--dtype", "fp32", "--extend", "freenoise", "--seed", "123",
             "--format", "png"]


@pytest.fixture
def reference_noise(monkeypatch):
    """The fixture's starting noise in place of the video's own draw (FreeNoise's script draws it after other
    draws of its process), so that the command's frames can be compared with the script's."""
    cases = load_file(tiny("vc2_512_freenoise") / "cases.safetensors")
    monkeypatch.setattr("vcraft.pipeline.api.draw_noise", lambda schedule, generator, shape:
                        cases["noise_rescheduling.T32_s4.base"][None].clone())
    return cases


def _config():
    """FreeNoise's tiny config with vc2_512's weights, which it names (its folder holds no checkpoint)."""
    return ["--config", tiny("vc2_512_freenoise") / "config.yaml", "--ckpt", tiny("vc2_512") / "model.safetensors"]


def _assert_frames(frames: np.ndarray, ref: torch.Tensor) -> None:
    diff = np.abs(frames.astype(int) - ref.numpy().astype(int))
    assert frames.shape == tuple(ref.shape) and diff.max() <= 1, f"max difference {diff.max()}"
    assert (diff > 0).mean() <= 0.001


@pytest.mark.parametrize("how,case", [("one prompt", "end_to_end"), ("two prompts", "multi_prompt")])
def test_the_command_makes_freenoises_frames(tmp_path, reference_noise, how, case):
    prompts = ["a red fox running through snow"]
    if how == "two prompts":
        (tmp_path / "mp.txt").write_text("a red fox running through snow;a red fox sleeping in the snow\n")
        prompts = ["-f", tmp_path / "mp.txt", "--prompt-separator", ";"]
    out = vcraft("generate", *prompts, *_config(), *FREENOISE, "-o", tmp_path / "video", "-q")
    assert out.returncode == 0, out.stderr
    _assert_frames(read_pngs(tmp_path / "video"), reference_noise[f"{case}.frames_uint8"])
    made = json.loads((tmp_path / "video.json").read_text())
    assert (made["extend"], made["window"], made["window_stride"]) == ("freenoise", 16, 4)
    if how == "two prompts":
        assert made["prompts"] == ["a red fox running through snow", "a red fox sleeping in the snow"]
        assert made["at"] == [0, 16]


def test_a_schedule_from_the_command_line_a_prompt_file_and_a_sidecar_makes_the_same_video(tmp_path):
    out = vcraft("generate", "a red circle moving left", "--then", "16:a blue circle moving left", "--frames", "24",
                 "--steps", "4", "--seed", "1", "-o", tmp_path / "a.mp4", "-q")
    assert out.returncode == 0, out.stderr
    made = json.loads((tmp_path / "a.json").read_text())
    assert (made["prompts"], made["at"]) == (["a red circle moving left", "a blue circle moving left"], [0, 16])
    video = iio.imread(tmp_path / "a.mp4")
    masks = object_masks(video / 255.0)
    # The embedded model's windows (16 frames, 8 given): frames 0-15 red, the second window's 8 new ones blue.
    assert measure_colour(video[:16] / 255.0, masks[:16]) == "red"
    assert measure_colour(video[16:] / 255.0, masks[16:]) == "blue"
    row = {"prompts": ["a red circle moving left", "a blue circle moving left"], "at": [0, 16], "frames": 24,
           "steps": 4, "name": "row"}
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n")
    again = [vcraft("generate", "--from", tmp_path / "a.json", "-o", tmp_path / "b.mp4", "-q"),
             vcraft("generate", "-f", tmp_path / "p.jsonl", "--seed", "1", "-o", tmp_path, "-q")]
    assert [r.returncode for r in again] == [0, 0], [r.stderr for r in again]
    assert np.array_equal(iio.imread(tmp_path / "b.mp4"), video)
    assert np.array_equal(iio.imread(tmp_path / "row.mp4"), video)


@pytest.mark.parametrize("args,message", [
    (["a", "--then", "40:b", "--then", "20:c", "--frames", "64"], "must increase"),
    (["a", "--then", "70:b", "--frames", "64"], "beyond the video's 64 frames"),
    (["a", "--then", "  ", "--frames", "64"], "prompt 2 of the prompts along the video is empty"),
    (["a", "--then", "b", "--then", "20:c", "--frames", "64"], "give every --then as FRAME:PROMPT, or none"),
    (["a", "--then", "40:b", "--then", "44:c", "--frames", "64"], "would be no window's"),
    (["a", "--then", "b", "--frames", "64", "--extend", "freenoise", "--window", "20"], "--window must be between"),
    (["a", "b", "--then", "c"], "--then follows one prompt"),
    (["a", "--extend", "freenoise", "--frames", "2000000"], "need about"),
])
def test_a_bad_schedule_is_one_error_line_and_writes_nothing(tmp_path, args, message):
    out = vcraft("generate", *args, "-o", tmp_path / "out.mp4")
    assert out.returncode != 0
    assert message in one_error_line(out)
    assert list(tmp_path.iterdir()) == []


def test_a_prompt_file_row_with_frames_for_the_wrong_count_of_prompts_is_named(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompts": ["a", "b"], "at": [0]}) + "\n")
    out = vcraft("generate", "-f", tmp_path / "p.jsonl", "-o", tmp_path / "out")
    assert "p.jsonl:1: 'at' gives 1 frame(s) for 2 prompts" in one_error_line(out)


def test_an_overlong_freenoise_request_is_refused_before_loading(tmp_path):
    """vc2-512's weights are not on this machine: the refusal comes before any attempt to load them."""
    out = vcraft("generate", "a corgi", "--model", "vc2-512", "--extend", "freenoise", "--frames", "100000",
                 "--device", "cpu", "-o", tmp_path / "out.mp4")
    assert "--extend freenoise: 100000 frames at 320x512 need about" in one_error_line(out)
