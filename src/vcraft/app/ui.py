"""`vcraft ui`: a local web app over the Python API (Gradio, an optional extra), as VideoCrafter's own demo.

The model is loaded once per server; requests wait in Gradio's queue and run one at a time. A video is made by
render.render, as on the command line (checked settings, sidecar, temporary name then rename), in a thread of
its own, so that the page sees each denoising step and Stop ends the render between two steps.
"""

from __future__ import annotations

import inspect
import os
import queue
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from vcraft.app import sidecar
from vcraft.app.batch import Video, check_writable, slug
from vcraft.app.render import Job, Outcome, Stopped, load, render
from vcraft.config import SAMPLERS
from vcraft.errors import VcraftError
from vcraft.loaders.lora import LoRA
from vcraft.pipeline.api import TextToVideo
from vcraft.pipeline.settings import EXTENDS, default_sampler, then_prompts

QUEUE_SIZE = 8  # requests waiting at most; more are turned away with a message
NO_LORA = "none"
DEFAULT_EXTEND = "the model's"
RECENT = 12  # renders listed
OPTIONAL = ("control_video", "motion_guidance")  # inputs an API client may leave out (others have values)


class RenderThread(threading.Thread):
    """One video rendered in the background; its progress and its outcome come through `events`."""

    def __init__(self, pipe: TextToVideo, job: Job, video: Video):
        super().__init__(daemon=True)
        self.pipe, self.job, self.video = pipe, job, video
        self.events: queue.Queue = queue.Queue()
        self.stop = threading.Event()

    def progress(self, step: int, total: int) -> None:
        if self.stop.is_set():
            raise Stopped()
        self.events.put((step, total))

    def run(self) -> None:
        try:
            self.events.put(render(self.pipe, self.job, self.video, self.progress))
        except Stopped:
            self.events.put(None)


class App:
    """The page's handlers, over one loaded pipeline and one output folder (the job's)."""

    def __init__(self, pipe: TextToVideo, job: Job, loras: Optional[dict[str, LoRA]] = None):
        """`loras`: the LoRAs the page offers, by the name it shows; each request merges its choice (removing the
        previous one first, which restores the loaded weights exactly)."""
        self.pipe, self.job, self.outputs = pipe, job, job.options.output
        self.loras = loras or {}
        self.merged: tuple[str, float] = (NO_LORA, 0.0)
        self.rendering = threading.Event()
        self.waiting: Callable[[], int] = lambda: 0  # requests in Gradio's queue, set by `build`

    def place(self) -> str:
        """Where a request that is about to join the queue stands (sent before it joins, without queueing)."""
        ahead = self.waiting() + self.rendering.is_set()
        return f"busy: {ahead} ahead of you, your video starts when they are done" if ahead else "starting"

    def generate(self, prompt: str, negative: str, frames: int, steps: int, guidance: float, eta: float,
                 fps: int, seed: int, sampler: str, image: Optional[str] = None, lora: str = NO_LORA,
                 lora_scale: float = 1.0, control_video: Optional[str] = None, then: str = "",
                 extend: str = DEFAULT_EXTEND, motion_guidance: Optional[float] = None) -> Iterator[tuple]:
        """Yields (video, sidecar, status, recent renders) as the render goes; the last is the finished video.
        `image`: the picture's file, for image-to-video models (their page has an image input); `lora`: one of the
        offered LoRAs' names, merged at `lora_scale` (the page has a LoRA choice when LoRAs are offered);
        `control_video`: a video whose structure the new one follows, for models with a control adapter (their page
        has a video input; none: text alone); `then`: later prompts along the video, one a line, each `PROMPT` or
        `FRAME: PROMPT` (as --then); `extend`: how a long video is made (--extend), or the model's default;
        `motion_guidance`: for models with motion guidance (their page has its input)."""
        import gradio as gr

        try:
            schedule = then_prompts(prompt, [line for line in then.splitlines() if line.strip()]) if then else {}
            s = self.pipe.settings(prompt, negative=negative, frames=frames, steps=steps, guidance=guidance,
                                   eta=eta, fps=fps, save_fps=fps, seed=seed, sampler=sampler, image=image,
                                   control_video=control_video, extend=None if extend == DEFAULT_EXTEND else extend,
                                   motion_guidance=motion_guidance, **schedule)
            self._use_lora(lora, lora_scale)
        except VcraftError as exc:
            raise gr.Error(str(exc)) from None
        path = _unused(self.outputs / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(prompt)}-{s.seed}.mp4")
        windows = self.pipe.window_count(s)
        worker = RenderThread(self.pipe, self.job, Video(0, 0, s, path, "web"))
        worker.start()
        self.rendering.set()
        try:
            while True:
                event = worker.events.get()
                if isinstance(event, Outcome):
                    break
                step, total = event
                window = f", window {(step - 1) * windows // total + 1} of {windows}" if windows > 1 else ""
                yield None, None, f"step {step} of {total}{window}", gr.update()
        finally:  # also when Stop closes this generator: the render ends at its next step, leaving no file
            worker.stop.set()
            worker.join()
            self.rendering.clear()
        if event.error is not None:
            raise gr.Error(f"the video failed: {event.error}")
        yield str(path), str(sidecar.path_of(path)), f"{path.name}: {event.seconds:.1f} s", self.recent()

    def _use_lora(self, name: str, scale: float) -> None:
        """The model with this LoRA merged at this scale (and no other), changing the weights only when needed."""
        if name != NO_LORA and name not in self.loras:
            raise VcraftError(f"unknown LoRA '{name}'; choose one of: {', '.join([NO_LORA, *self.loras])}")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise VcraftError(f"the LoRA scale must be a number, got {scale!r}")
        if (name, scale) == self.merged:
            return
        self.pipe.clear_loras()
        self.merged = (NO_LORA, 0.0)
        if name != NO_LORA:
            self.pipe.add_lora(self.loras[name], scale)
            self.merged = (name, scale)

    def recent(self) -> list[list[Any]]:
        """The latest renders in the output folder: file, prompt, seed, sampler and steps (from the sidecars)."""
        rows = []
        for path in sorted(self.outputs.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                made = sidecar.read(path)
            except VcraftError:
                continue
            video = path.with_suffix(".mp4")
            if video.is_file():
                rows.append([video.name, made["prompt"], made["seed"], made["sampler"], made["steps"]])
            if len(rows) == RECENT:
                break
        return rows


def build(app: App):
    """The Gradio page; `generate` is also the API endpoint `/generate` (gradio_client)."""
    import gradio as gr

    d, unet = app.pipe.config.sampling, app.pipe.config.model.unet
    with gr.Blocks(title="vcraft") as page:
        gr.Markdown(f"# vcraft\nText to video with `{app.pipe.config.name}`: {app.pipe.config.description}")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a red circle moving left", elem_id="prompt")
                # The inputs only some models have, by the name `generate` takes them under.
                pictures = {} if app.pipe.image_encoder is None else {
                    "image": gr.Image(label="Picture (the video starts from it)", type="filepath", elem_id="image")}
                controls = {} if app.pipe.adapter is None else {
                    "control_video": gr.Video(label="Control video (the new video follows its structure; optional)",
                                              sources=["upload"], elem_id="control_video")}
                loras = {} if not app.loras else {
                    "lora": gr.Dropdown(label="LoRA", choices=[NO_LORA, *app.loras], value=NO_LORA, elem_id="lora",
                                        info="trigger words go into the prompt as you write them: " + "; ".join(
                                            f"{name}: {lora.trigger!r}" for name, lora in app.loras.items()
                                            if lora.trigger)),
                    "lora_scale": gr.Number(label="LoRA scale", value=1.0, elem_id="lora_scale")}
                then = gr.Textbox(label="Then (later prompts along the video, one a line: FRAME: PROMPT, or PROMPT "
                                        "to split it evenly)", lines=2, value="", elem_id="then")
                # A few-step model makes no unconditional pass: its negative prompt stays hidden and empty (the API's
                # inputs are the same for every model); motion guidance is empty (none) unless given.
                negative = gr.Textbox(label="Negative prompt", value="", visible=not unet.guidance_embedding)
                motions = {} if not unet.motion_embedding else {
                    "motion_guidance": gr.Number(label="Motion guidance (empty: none; its demo used 0.05)", value=None,
                                                 minimum=0, elem_id="motion_guidance")}
                with gr.Row():
                    frames = gr.Number(label="Frames", value=d.frames, precision=0, minimum=1, elem_id="frames")
                    steps = gr.Number(label="Steps", value=d.steps, precision=0, minimum=1, elem_id="steps")
                    sampler = gr.Dropdown(label="Sampler", choices=list(SAMPLERS),
                                          value=d.sampler or default_sampler(app.pipe.config.model))
                with gr.Row():
                    guidance = gr.Number(label="Guidance", value=d.guidance, minimum=0)
                    eta = gr.Number(label="Eta", value=d.eta, minimum=0)
                    fps = gr.Number(label="FPS", value=d.fps, precision=0, minimum=1)
                    extend = gr.Dropdown(label="Long videos", choices=[DEFAULT_EXTEND, *EXTENDS],
                                         value=DEFAULT_EXTEND, elem_id="extend")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                    dice = gr.Button("Random seed", size="sm")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", elem_id="stop")
            with gr.Column():
                video = gr.Video(label="Video", elem_id="video", autoplay=True, loop=True)
                status = gr.Markdown(elem_id="status")
                sidecar = gr.File(label="Settings (JSON sidecar)")
        recent = gr.Dataframe(headers=["file", "prompt", "seed", "sampler", "steps"], value=app.recent(),
                              label=f"Recent renders in {app.outputs}", interactive=False)
        dice.click(lambda: secrets.randbelow(2**31), outputs=seed, api_name=False)
        # The place in the queue first, unqueued, then the render (its progress overlay on the video alone, so
        # that the place stays readable).
        inputs = {"prompt": prompt, "negative": negative, "frames": frames, "steps": steps, "guidance": guidance,
                  "eta": eta, "fps": fps, "seed": seed, "sampler": sampler, "then": then, "extend": extend, **motions,
                  **pictures, **loras, **controls}
        event = run.click(app.place, outputs=status, queue=False, api_name=False).then(
            _by_name(app.generate, list(inputs)), list(inputs.values()),
            [video, sidecar, status, recent], api_name="generate", show_progress_on=video)
        stop.click(None, cancels=[event], api_name=False)
        page.load(app.recent, outputs=recent, api_name=False)
    app.waiting = lambda: len(page._queue)  # Gradio's queue object; its length is the requests waiting
    return page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)


def _unused(path: Path) -> Path:
    """`path`, or with -2, -3, ... added to its stem when a video of that name exists already (two requests in one
    second with the same prompt and seed, say, but other settings)."""
    candidate, n = path, 1
    while candidate.exists() or sidecar.path_of(candidate).exists():
        n += 1
        candidate = path.with_stem(f"{path.stem}-{n}")
    return candidate


def _by_name(generate, names: list[str]):
    """`generate` taking the page's inputs in order, passed to it by name (the inputs a page has vary by model). Its
    signature names them, so the API's parameters have those names, and an optional input (`OPTIONAL`) may be left
    out by an API client."""
    def handler(*values):
        yield from generate(**dict(zip(names, values)))

    handler.__signature__ = inspect.Signature([inspect.Parameter(
        name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None if name in OPTIONAL else inspect.Parameter.empty)
        for name in names])
    return handler


def serve(job: Job, host: str, port: int, share: bool, log, loras: Optional[dict[str, LoRA]] = None) -> None:
    """Load the model, then serve the page until Ctrl-C (after `import_gradio`), writing into `job.options.output`."""
    outputs = job.options.output
    check_writable(outputs)
    pipe = load(job)
    log(f"loaded {job.config.name} on {pipe.device}; serving http://{host}:{port} (Ctrl-C to stop)")
    page = build(App(pipe, job, loras))
    page.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(outputs)], quiet=True)


def import_gradio(outputs: Path) -> None:
    """Gradio, set up to keep the copies of the files it serves in the output folder and to call no one."""
    os.environ.setdefault("GRADIO_TEMP_DIR", str(outputs.resolve() / ".gradio"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise VcraftError('vcraft ui needs Gradio, an optional extra: pip install "vcraft[ui]"') from None
