"""`--continue VIDEO` (and `continues=` in Python): a given video extended by new frames with the long-video
machinery, its own frames first. With the embedded model: tests/test_shapes_model.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import one_error_line, read_pngs, small_video_args, vcraft


@pytest.mark.slow
def test_a_tiny_fixture_video_is_continued_by_replacement_and_made_again_from_its_sidecar(tmp_path):
    start = tmp_path / "start"
    assert vcraft("generate", "a red fox", *small_video_args(), "--seed", 1, "--format", "png",
                  "-o", start).returncode == 0
    args = [*small_video_args(), "--continue", start, "--frames", 8, "--seed", 2, "--format", "png"]
    args.remove("--height"), args.remove("64"), args.remove("--width"), args.remove("128")  # the video's own size
    result = vcraft("generate", "a red fox", *args, "-o", tmp_path / "more")
    assert result.returncode == 0, result.stderr
    given, made = read_pngs(start), read_pngs(tmp_path / "more")
    assert made.shape == (16, 64, 128, 3) and np.array_equal(made[:8], given)
    sidecar = json.loads((tmp_path / "more.json").read_text())
    assert sidecar["continues"] == str(start.resolve()) and sidecar["extend"] == "replace"
    assert sidecar["frames"] == 8 and sidecar["frames_written"] == 16
    again = vcraft("generate", "--from", tmp_path / "more.json", "-o", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert np.array_equal(read_pngs(tmp_path / "again"), made)
    (start / "frame_00000.png").write_bytes((start / "frame_00001.png").read_bytes())
    changed = vcraft("generate", "--from", tmp_path / "more.json", "-o", tmp_path / "changed")
    assert "has changed since the video was made" in one_error_line(changed)


@pytest.mark.parametrize("case", ["missing", "not a video", "no frames", "other size", "too short"])
def test_bad_videos_to_continue_are_one_error_line(tmp_path, case):
    import imageio.v3 as iio

    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "short").mkdir()
    iio.imwrite(tmp_path / "short" / "frame_00000.png", np.zeros((64, 128, 3), np.uint8))
    video, extra, expected = {
        "missing": (tmp_path / "nope.mp4", [], "video not found"),
        "not a video": (tmp_path / "notes.mp4", [], "cannot read video"),
        "no frames": (tmp_path / "empty", [], "without PNG frames"),
        "other size": (tmp_path / "short", ["--height", "128"], "it is continued at its own size"),
        "too short": (tmp_path / "short", [], "needs at least --overlap"),
    }[case]
    args = [a for a in small_video_args() if a not in ("--height", "64", "--width", "128")]
    result = vcraft("generate", "a fox", *args, "--continue", video, *extra, "--seed", 1, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert expected in one_error_line(result)
    assert not (tmp_path / "out").exists()
