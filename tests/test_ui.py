"""`vcraft ui` as a real server on localhost with the embedded model, driven by gradio_client and by headless
Chromium (Selenium, the operating system's chromium and chromedriver).

Skipped where Gradio (`pip install "vcraft[ui]"`) or the browser is missing, except under VCRAFT_REQUIRE_UI=1 (CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from vcraft.data.measure import measure

pytestmark = pytest.mark.slow  # a web server and a browser: not in the fast subset

REQUIRED = os.environ.get("VCRAFT_REQUIRE_UI") == "1"
if not REQUIRED:
    pytest.importorskip("gradio", reason='the web app is an optional extra: pip install "vcraft[ui]"')
    pytest.importorskip("gradio_client", reason='the web app is an optional extra: pip install "vcraft[ui]"')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`vcraft ui` on a free port, once it answers; (its address, its output folder)."""
    outputs = tmp_path_factory.mktemp("ui") / "outputs"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "vcraft", "ui", "--port", str(port), "-o", str(outputs)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    address = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(address, timeout=2)
            break
        except OSError:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.5)
    yield address, outputs
    process.terminate()
    process.wait(timeout=30)


def read_video(path: str | Path | dict) -> np.ndarray:
    """The frames of an MP4 (gradio_client gives a video as a path, or a dict holding one)."""
    import imageio.v3 as iio

    return iio.imread(path["video"] if isinstance(path, dict) else path, index=None)


def test_the_generate_api_makes_the_prompted_video(server):
    from gradio_client import Client

    address, outputs = server
    client = Client(address, verbose=False)
    # 6 steps, as the requests below: the prompt's colour is there already.
    video, sidecar, status, _ = client.predict("a red circle moving left", "", 16, 6, 2.5, 0.0, 8, 3, "ddim",
                                               api_name="/generate")
    frames = read_video(video)
    assert frames.shape == (16, 64, 64, 3)
    assert measure(frames.astype(np.float32) / 255)["colour"] == "red"
    assert Path(sidecar).read_text().count('"seed": 3') == 1
    made = sorted(p.name for p in outputs.iterdir() if p.suffix in (".mp4", ".json"))
    assert len(made) >= 2 and status.split(":")[0] in made


def test_the_generate_api_takes_prompts_along_the_video(server):
    from gradio_client import Client

    client = Client(server[0], verbose=False)
    # 4 steps, as tests/test_schedules.py's schedule: both colours are there already.
    video, sidecar, _, _ = client.predict("a red circle moving left", "", 24, 4, 2.5, 0.0, 8, 3, "ddim",
                                          then="16: a blue circle moving left", api_name="/generate")
    frames = read_video(video).astype(np.float32) / 255
    assert frames.shape[0] == 24  # two windows: the second one's 8 new frames take the second prompt
    assert measure(frames[:16])["colour"] == "red" and measure(frames[16:])["colour"] == "blue"
    made = json.loads(Path(sidecar).read_text())
    assert (made["prompts"], made["at"]) == (["a red circle moving left", "a blue circle moving left"], [0, 16])


def test_a_bad_setting_is_an_error_message_not_a_traceback(server):
    from gradio_client import Client

    client = Client(server[0], verbose=False)
    with pytest.raises(Exception, match="--steps must be between 1 and 1000"):
        client.predict("a red circle", "", 16, 5000, 2.5, 0.0, 8, 3, "ddim", api_name="/generate")


def test_two_requests_sent_together_both_complete_one_after_the_other(server):
    from gradio_client import Client

    client = Client(server[0], verbose=False)
    jobs = [client.submit(f"a {colour} square moving up", "", 16, 6, 2.5, 0.0, 8, seed, "ddim",
                          api_name="/generate") for colour, seed in (("blue", 11), ("green", 12))]
    finished: dict[int, float] = {}
    deadline = time.monotonic() + 300
    while len(finished) < 2 and time.monotonic() < deadline:
        finished.update({k: time.monotonic() for k, job in enumerate(jobs) if job.done() and k not in finished})
        time.sleep(0.05)
    results = [job.result(timeout=1) for job in jobs]
    colours = [measure(read_video(r[0]).astype(np.float32) / 255)["colour"] for r in results]
    assert sorted(colours) == ["blue", "green"]
    later = max(finished, key=finished.get)
    render_seconds = float(results[later][2].rsplit(": ", 1)[1].removesuffix(" s"))
    # One at a time: the later video was rendered after the earlier one had finished.
    assert abs(finished[1] - finished[0]) >= 0.8 * render_seconds, (finished, render_seconds)


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        if REQUIRED:
            raise AssertionError("chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
        pytest.skip("no browser: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def _page(browser, address: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(address)
    wait = WebDriverWait(browser, 120)
    wait.until(ready.element_to_be_clickable((By.ID, "generate")))
    return wait


def _fill(browser, elem_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(text)


def test_in_the_browser_a_prompt_becomes_a_video_in_the_page(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    address, _ = server
    wait = _page(browser, address)
    _fill(browser, "prompt", "a blue circle moving right")
    browser.find_element(By.ID, "generate").click()
    source = wait.until(lambda b: (b.find_elements(By.CSS_SELECTOR, "#video video") or [None])[0]
                        and b.find_element(By.CSS_SELECTOR, "#video video").get_attribute("src"))
    assert ".mp4" in source
    downloaded = tmp_path / "page.mp4"
    urllib.request.urlretrieve(source, downloaded)
    frames = read_video(downloaded)
    assert frames.shape == (16, 64, 64, 3)
    assert measure(frames.astype(np.float32) / 255)["colour"] == "blue"
    browser.save_screenshot(str(tmp_path / "app.png"))


def test_in_the_browser_a_bad_input_shows_an_error_message(server, browser):
    from selenium.webdriver.common.by import By

    wait = _page(browser, server[0])
    _fill(browser, "prompt", "a red square")
    _fill(browser, "steps", "5000")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda b: "--steps must be between 1 and 1000" in b.page_source)
    assert "Traceback" not in browser.page_source


def test_in_the_browser_a_waiting_request_sees_its_place_and_stop_cancels_a_long_video(server, browser):
    """A 256-frame video (about a minute here) is being written (its temporary file exists); a second tab's
    request is told it waits behind one; Stop ends the long video: its temporary file goes within seconds and no
    file of it appears, and the waiting video is made next."""
    from selenium.webdriver.common.by import By

    address, outputs = server

    def made() -> set[str]:
        return {p.name for p in outputs.iterdir() if p.name != ".gradio"} if outputs.exists() else set()

    def partial() -> list[str]:
        return [name for name in made() if ".partial-" in name]

    before = made()
    wait = _page(browser, address)
    long_tab = browser.current_window_handle
    _fill(browser, "prompt", "a green triangle moving left")
    _fill(browser, "frames", "256")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda b: partial())

    browser.switch_to.new_window("tab")
    _page(browser, address)
    _fill(browser, "prompt", "a yellow square moving up")
    _fill(browser, "steps", "2")  # a short render, once its turn comes
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda b: "busy: 1 ahead of you" in b.find_element(By.ID, "status").text)

    browser.switch_to.window(long_tab)
    browser.find_element(By.ID, "stop").click()
    deadline = time.monotonic() + 15
    while partial() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not partial(), "Stop did not end the render"
    browser.close()
    browser.switch_to.window(browser.window_handles[0])
    wait.until(lambda b: ".mp4" in (b.find_element(By.CSS_SELECTOR, "#video video").get_attribute("src") or ""))
    assert {name.split("-", 2)[2] for name in made() - before} == {"a-yellow-square-moving-up-0.mp4",
                                                                   "a-yellow-square-moving-up-0.json"}


def test_an_image_to_video_model_gets_a_picture_input(tmp_path, monkeypatch):
    """Built in this process around the tiny image-to-video fixture: its page has the image input, and a render
    from it records the picture in the sidecar."""
    import hashlib
    import json

    from reference import reference_dir

    from vcraft.app.options import RunOptions
    from vcraft.app.render import Job
    from vcraft.app.ui import App, build, import_gradio
    from vcraft.config import load_config
    from vcraft.pipeline.api import TextToVideo

    root = reference_dir() / "tiny" / "vc1_i2v_512"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / ".gradio"))  # as import_gradio sets it, undone after
    import_gradio(tmp_path)
    cfg = load_config(root / "config.yaml")
    pipe = TextToVideo.from_config(cfg, root / "model.safetensors", device="cpu")
    app = App(pipe, Job(cfg, root / "model.safetensors", RunOptions(output=tmp_path)))
    page = build(app)
    assert [c.elem_id for c in page.blocks.values() if type(c).__name__ == "Image"] == ["image"]
    *_, (video, sidecar, status, _) = app.generate("a red fox", "", 8, 3, 12.0, 0.0, 8, 1, "ddim",
                                                   str(root / "input.png"))
    assert read_video(video).shape == (8, 64, 128, 3)
    assert json.loads(Path(sidecar).read_text())["image_sha256"] == hashlib.sha256(
        (root / "input.png").read_bytes()).hexdigest()
    with pytest.raises(Exception, match="give one with --image"):
        list(app.generate("a red fox", "", 8, 3, 12.0, 0.0, 8, 1, "ddim", None))


def test_the_page_switches_loras_between_requests_and_leaves_the_weights_as_they_were(tmp_path, monkeypatch):
    """The first release's tiny model with its tiny LoRA offered: a request with the LoRA records it, and the next
    one without it makes, bit for bit, the video of a model that never had it."""
    import json

    from reference import reference_dir

    from vcraft.app.options import RunOptions
    from vcraft.app.render import Job
    from vcraft.app.ui import App, build, import_gradio
    from vcraft.config import load_config
    from vcraft.loaders.lora import read_lora
    from vcraft.pipeline.api import TextToVideo

    root = reference_dir() / "tiny" / "vc0_base"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / ".gradio"))
    import_gradio(tmp_path)
    cfg = load_config(root / "config.yaml")
    load = lambda: TextToVideo.from_config(cfg, root / "model.ckpt", device="cpu")  # noqa: E731
    app = App(load(), Job(cfg, root / "model.ckpt", RunOptions(output=tmp_path)),
              {"tiny-style": read_lora(root / "lora_unet.ckpt")})
    ids = [c.elem_id for c in build(app).blocks.values()]
    assert "lora" in ids and "lora_scale" in ids
    request = ("a red fox, tiny style", "", 8, 3, 15.0, 0.0, 8, 1, "ddim")
    *_, (styled, styled_sidecar, _, _) = app.generate(*request, lora="tiny-style", lora_scale=0.7)
    *_, (plain, plain_sidecar, _, _) = app.generate(*request)
    assert [e["scale"] for e in json.loads(Path(styled_sidecar).read_text())["loras"]] == [0.7]
    assert json.loads(Path(plain_sidecar).read_text())["loras"] == []
    (tmp_path / "never").mkdir()
    never = App(load(), Job(cfg, root / "model.ckpt", RunOptions(output=tmp_path / "never")))
    *_, (made, _, _, _) = never.generate(*request)
    assert np.array_equal(read_video(plain), read_video(made))
    assert not np.array_equal(read_video(styled), read_video(plain))
    with pytest.raises(Exception, match="unknown LoRA 'other'"):
        list(app.generate(*request, lora="other"))
    with pytest.raises(Exception, match="the LoRA scale must be a number"):
        list(app.generate(*request, lora="tiny-style", lora_scale=None))


def test_a_model_with_a_control_adapter_gets_a_control_video_input(tmp_path, monkeypatch):
    """VideoControl's tiny model: its page has the control-video input; a render with a control video records it,
    one without is plain text-to-video, and the two differ."""
    import json

    from reference import reference_dir

    from vcraft.app.options import RunOptions
    from vcraft.app.render import Job
    from vcraft.app.ui import App, build, import_gradio
    from vcraft.config import load_config
    from vcraft.pipeline.api import TextToVideo

    root = reference_dir() / "tiny" / "vc0_depth"
    base = reference_dir() / "tiny" / "vc0_base" / "model.ckpt"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / ".gradio"))
    import_gradio(tmp_path)
    cfg = load_config(root / "config.yaml")
    parts = {"adapter": root / "adapter.pth"}
    app = App(TextToVideo.from_config(cfg, base, device="cpu", parts=parts),
              Job(cfg, base, RunOptions(output=tmp_path), parts=parts))
    assert [c.elem_id for c in build(app).blocks.values() if type(c).__name__ == "Video"] == ["control_video",
                                                                                               "video"]
    request = ("a red fox", "", 4, 3, 15.0, 0.0, 8, 1, "ddim")  # 4 frames: the depth model runs on each at 384x384
    *_, (followed, sidecar, _, _) = app.generate(*request, control_video=str(root / "control.mp4"))
    *_, (plain, plain_sidecar, _, _) = app.generate(*request)
    assert json.loads(Path(sidecar).read_text())["control_video"] == str((root / "control.mp4").resolve())
    assert "control_video" not in json.loads(Path(plain_sidecar).read_text())
    assert not np.array_equal(read_video(followed), read_video(plain))


def test_a_few_step_model_gets_motion_guidance_and_no_negative_prompt(tmp_path, monkeypatch):
    """T2V-Turbo-v2's tiny model (--unet): its page offers motion guidance, hides the negative prompt, picks the
    consistency sampler; a render with motion guidance records it and differs from one without."""
    import json

    from reference import reference_dir

    from vcraft.app.options import RunOptions
    from vcraft.app.render import Job
    from vcraft.app.ui import App, build, import_gradio
    from vcraft.config import load_config
    from vcraft.pipeline.api import TextToVideo

    root = reference_dir() / "tiny" / "vc2_512_turbo"
    base = reference_dir() / "tiny" / "vc2_512" / "model.safetensors"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / ".gradio"))
    import_gradio(tmp_path)
    cfg = load_config(root / "config.yaml", ["model.unet.guidance_embedding=256", "model.unet.motion_embedding=256"])
    parts = {"unet": root / "unet_mg.pt"}
    app = App(TextToVideo.from_config(cfg, base, device="cpu", parts=parts),
              Job(cfg, base, RunOptions(output=tmp_path), parts=parts))
    blocks = build(app).blocks.values()
    assert sorted(c.elem_id for c in blocks if type(c).__name__ == "Number" and c.elem_id) == [
        "frames", "motion_guidance", "steps"]
    assert [c.visible for c in blocks if getattr(c, "label", None) == "Negative prompt"] == [False]
    assert [c.value for c in blocks if getattr(c, "label", None) == "Sampler"] == ["consistency"]
    request = ("a red fox", "", 8, 2, 7.5, 0.0, 8, 1, "consistency")
    *_, (moved, sidecar, _, _) = app.generate(*request, motion_guidance=0.05)
    *_, (plain, plain_sidecar, _, _) = app.generate(*request)
    made = json.loads(Path(sidecar).read_text())
    assert (made["motion_guidance"], made["sampler"], made["parts"]["unet"]) == (0.05, "consistency",
                                                                                 str(parts["unet"].resolve()))
    assert json.loads(Path(plain_sidecar).read_text())["motion_guidance"] is None
    assert not np.array_equal(read_video(moved), read_video(plain))
