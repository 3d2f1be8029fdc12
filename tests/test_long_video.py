"""Videos longer than the model's clip: windows, frame counts, `--overlap`/`--extend`, interrupting."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_cli import FOX, read_pngs, small_video_args, tiny, vcraft

from vcraft.sampling.long_video import window_count


@pytest.fixture(scope="module")
def pipe():
    from vcraft import TextToVideo

    return TextToVideo.from_pretrained(str(tiny() / "config.yaml"), tiny() / "model.safetensors", device="cpu")


@pytest.mark.parametrize("frames", [5, 16, 17, 28, 29, 100])
def test_windows_make_exactly_the_frames_asked_for(pipe, monkeypatch, frames):
    """A stand-in sampler numbers a window's frames on from its first given frame: frame i of the video must
    be i, every window continuing exactly where its kept frames left off."""
    import vcraft.pipeline.api

    seen = []

    def numbering(denoiser, x, *args, **kwargs):
        given = denoiser.cond.given
        seen.append(None if given is None else given[0, 0, :, 0, 0].tolist())
        start = 0 if given is None else int(given[0, 0, 0, 0, 0])
        return torch.arange(start, start + x.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1).expand(x.shape).clone()

    monkeypatch.setattr(vcraft.pipeline.api, "sampler", lambda name: numbering)
    settings = pipe.settings(FOX, frames=frames, height=64, width=64, steps=2, overlap=4)
    made = torch.cat(list(pipe.latents(settings)), dim=2)
    assert made[0, 0, :, 0, 0].tolist() == list(range(frames))
    assert len(seen) == window_count(frames, 16, 4)
    assert all(kept == list(range(k * 12 + 12, k * 12 + 16)) for k, kept in enumerate(seen[1:]))


def test_replace_continues_the_kept_latents_of_an_official_format_model(pipe, monkeypatch):
    """Training-free extension with a tiny VideoCrafter2 checkpoint: each window starts with the previous
    window's last latent frames, and those frames steer the new ones."""
    import dataclasses

    import vcraft.pipeline.api

    settings = pipe.settings(FOX, seed=5, frames=24, height=64, width=64, steps=6, guidance=7.5, eta=0.0, fps=8)
    assert settings.extend == "replace" and settings.overlap == 4
    real, windows = vcraft.pipeline.api.sampler("ddim"), []

    def recording(denoiser, x, *args):
        start = x.clone()
        out = real(denoiser, x, *args)
        windows.append((denoiser, start, out.clone()))
        return out

    monkeypatch.setattr(vcraft.pipeline.api, "sampler", lambda name: recording)
    video = torch.cat(list(pipe.latents(settings)), dim=2)
    assert video.shape[2] == 24 and len(windows) == 2
    (first_denoiser, _, first), (second_denoiser, start, second) = windows
    kept = second_denoiser.cond.given
    assert first_denoiser.cond.given is None and torch.equal(kept, first[:, :, -4:])
    assert torch.equal(video, torch.cat([first, second[:, :, 4:12]], dim=2))
    # The same starting noise without the kept frames gives other new frames: the kept frames are used.
    alone = dataclasses.replace(second_denoiser, cond=dataclasses.replace(second_denoiser.cond, given=None))
    with torch.inference_mode():
        free = real(alone, start, pipe.schedule, 6)
    assert (free[:, :, 4:] - second[:, :, 4:]).abs().mean() > 0.05


def test_replace_noises_the_kept_frames_with_the_windows_own_starting_noise(pipe, monkeypatch):
    """Then they lie on DDIM's deterministic path from that noise to themselves, and share the window's
    frame-common noise when the model draws one (frame_noise_share)."""
    import vcraft.pipeline.api

    seen = []

    def capture(denoiser, x, schedule, steps, eta, noise, callback, replace):
        seen.append((denoiser.cond.given, x.clone(), replace))
        return x.clone()

    monkeypatch.setattr(vcraft.pipeline.api, "sampler", lambda name: capture)
    list(pipe.latents(pipe.settings(FOX, frames=20, height=64, width=64, steps=6, guidance=1.0)))
    (_, _, no_replace), (given, x, replace) = seen
    assert no_replace is None
    t = 999
    a, s = float(pipe.schedule.alphas_cumprod[t]), float(pipe.schedule.scale_arr[t])
    expected = a ** 0.5 * s * given + (1 - a) ** 0.5 * x[:, :, :4]
    assert torch.allclose(replace(x, t)[:, :, :4], expected, atol=1e-6)


@pytest.mark.slow
def test_long_video_from_the_command_line(tmp_path):
    out = tmp_path / "long"
    args = [*small_video_args(), "--frames", "21", "--steps", "3", "--seed", "2", "--format", "png"]
    result = vcraft("generate", FOX, *args, "-o", out)
    assert result.returncode == 0, result.stderr
    assert read_pngs(out).shape == (21, 64, 128, 3)
    import json

    meta = json.loads((tmp_path / "long.json").read_text())
    assert (meta["frames"], meta["overlap"], meta["extend"]) == (21, 4, "replace")
    again = vcraft("generate", FOX, *args, "-o", tmp_path / "again")
    assert again.returncode == 0 and np.array_equal(read_pngs(tmp_path / "again"), read_pngs(out))


@pytest.mark.parametrize("option, message", [
    (["--overlap", "0"], "--overlap must be between 1 and 15"),
    (["--overlap", "16"], "--overlap must be between 1 and 15"),
    (["--extend", "mask"], "--extend mask needs a model trained to continue videos"),
    (["--extend", "blend"], "--extend must be one of mask, replace, freenoise"),
])
def test_bad_long_video_options_are_refused_before_any_work(tmp_path, option, message):
    result = vcraft("generate", FOX, *small_video_args(), "--frames", "40", *option, "-o", tmp_path / "x.mp4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: " + message), result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_interrupting_a_long_render_leaves_nothing(tmp_path):
    # Far more frames than it will make: it is stopped once the first ones are written.
    args = [*small_video_args(), "--frames", "2000", "--steps", "4", "--seed", "1", "--format", "png"]
    # Ctrl-C as on a terminal, even where this test runs in the background (a shell's `&` makes children
    # ignore SIGINT, and Python then installs no handler for it).
    proc = subprocess.Popen([sys.executable, "-m", "vcraft", "generate", FOX, *map(str, args), "-o",
                             str(tmp_path / "long")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    # Wait until the render writes its first frames under the temporary name, then press Ctrl-C.
    while not list(tmp_path.glob(".long.partial-*/frame_00000.png")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted", err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt itself
def test_a_ctrl_c_that_python_drops_in_a_finaliser_stops_the_render_at_its_next_step():
    """Python drops a KeyboardInterrupt raised inside `__del__` (an image writer closing, say); the command remembers
    the signal, and its progress callback raises it again at the next denoising step."""
    import os

    from vcraft.app.cli import _interruptible, _remembered_interrupt

    class ClosesOnCollection:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # its handler runs here, inside the finaliser

    steps = []
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever ran the tests
    try:
        with _remembered_interrupt() as interrupted:
            progress = _interruptible(lambda step, total: steps.append(step), interrupted)
            progress(1, 3)
            ClosesOnCollection()  # made and finalised at once: the interrupt is dropped, and remembered
            assert interrupted.is_set()
            with pytest.raises(KeyboardInterrupt):
                progress(2, 3)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler put back
    finally:
        signal.signal(signal.SIGINT, before)
    assert steps == [1]
