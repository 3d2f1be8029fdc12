"""One video's generation settings, and the one function that validates them.

Command-line flags, prompt-file rows, `--from` sidecars and the Python API all build a `Settings` through
`make_settings`: every value it does not get comes from the model's config (its `sampling` section), every
value is checked here once, and nothing downstream re-checks or re-defaults one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Optional, Sequence

from vcraft.errors import VcraftError
from vcraft.pipeline.inputs import Footage, Picture, read_footage, read_picture

if TYPE_CHECKING:  # the command line's start imports this module (its flags) and not the config's machinery
    from vcraft.config import Config, ModelConfig

# Far above what the models were trained for (at most 576x1024), and it stops a typo such as 25600 from
# starting a render that cannot fit in memory.
MAX_SIDE = 2048
MAX_SEED = 2**63 - 1
EXTENDS = ("mask", "replace", "freenoise")


# Settings that are input files (a path, or pixels given in Python), recorded as their path and sha256.
INPUT_FILES = ("image", "continues", "control_video", "control_depth")


def _about(help: str, *names: str) -> dict[str, Any]:
    return {"help": help, "names": names}


@dataclass(frozen=True)
class Settings:
    """Everything a video depends on besides the model: its pixels are a function of these alone."""

    # Each field's `help` describes it, for the command line's flag (`--field-name` unless `names` says).
    prompt: str
    seed: int
    negative: str = field(metadata=_about("Negative prompt (default: the empty prompt)."))
    frames: int = field(metadata=_about("Number of frames."))
    height: int = field(metadata=_about("Height in pixels."))
    width: int = field(metadata=_about("Width in pixels."))
    sampler: str = field(metadata=_about(
        "ddim, dpmpp-2m, dpmpp-2m-sde, unipc, or consistency for few-step models (default: the model's)."))
    steps: int = field(metadata=_about("Denoising steps."))
    guidance: float = field(metadata=_about(
        "Classifier-free guidance scale (1 = off); a few-step model takes it as an input, with no second pass."))
    guidance_min_t: int = field(metadata=_about(
        "Guidance only at timesteps at or above this (0-1000; 0 = every step, as VideoCrafter)."))
    eta: float = field(metadata=_about(
        "Noise a step: DDIM's eta, or dpmpp-2m-sde's share (0 = deterministic); dpmpp-2m and unipc use none."))
    fps: int = field(metadata=_about("Motion-rate conditioning the model sees."))
    save_fps: int = field(metadata=_about("Playback rate written to the file."))
    overlap: int = field(metadata=_about(
        "Long videos: latent frames each window is given from the one before (default: the config's, else a "
        "quarter of the model's clip)."))
    extend: str = field(metadata=_about(
        "Long videos: mask (the UNet sees the given frames: models trained to continue), replace (put back each "
        "step: any model), or freenoise (all frames at once, FreeNoise's way: VideoCrafter1/2 and the embedded "
        "model). Default: per model."))
    window: int = field(default=0, metadata=_about(
        "--extend freenoise: frames its temporal attention sees at a time (default: the model's clip)."))
    window_stride: int = field(default=4, metadata=_about(
        "--extend freenoise: frames between one window's start and the next's."))
    motion_guidance: Optional[float] = field(default=None, metadata=_about(
        "Models with motion guidance (vc2-turbo-v2): its scale at timesteps 700 and above, 0 below (default: none, "
        "as the original app runs it; its demo used 0.05)."))
    # Prompts along the video, the first being `prompt` (empty: the prompt throughout), and the first frame of each
    # (the command line's --then; prompt files' "prompts" and "at").
    prompts: tuple[str, ...] = ()
    at: tuple[int, ...] = ()
    image: Optional[Picture] = field(default=None, metadata=_about(
        "Image-to-video models: the picture the video starts from and follows."))
    continues: Optional[Footage] = field(default=None, metadata=_about(
        "Continue this video (MP4, GIF or a PNG folder) by --frames new frames; the output holds both.",
        "--continue"))
    control_video: Optional[Footage] = field(default=None, metadata=_about(
        "Models with a control adapter: the new video follows this one's structure (its depth, or for the "
        "embedded model its brightness); MP4, GIF or a PNG folder."))
    control_depth: Optional[Footage] = field(default=None, metadata=_about(
        "Depth-controlled models: depth maps you already have (grey frames, near = bright), used instead of "
        "estimating them from --control-video."))
    control_stride: int = field(default=-1, metadata=_about(
        "Take every Nth frame of the control video (-1: as many as fit, the length divided by --frames; a stride "
        "that runs past the end falls back to that, as VideoCrafter does)."))

    def record(self) -> dict[str, Any]:
        """The settings as plain data, for sidecars and JSON output (input files as their path and sha256)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in INPUT_FILES}
        for name in INPUT_FILES:
            given = getattr(self, name)
            if given is not None:
                values.update({name: given.source, f"{name}_sha256": given.sha256})
        return values


# The type of every setting, as `check_type` enforces it; also what a prompt-file row may set. Input files are read
# by their readers (a path, or pixels given in Python).
READERS = {Picture: read_picture, Footage: read_footage}
TYPES: dict[str, type] = {f.name: {"int": int, "float": float, "str": str, "Optional[Picture]": Picture,
                                   "Optional[Footage]": Footage, "Optional[float]": float,
                                   "tuple[str, ...]": tuple[str, ...], "tuple[int, ...]": tuple[int, ...]}[f.type]
                          for f in fields(Settings)}


def check_type(key: str, value: Any) -> Any:
    """`value` as the type of setting `key` (an int may be given as 3.0, a float as 3; a list for a tuple; a picture
    read); VcraftError otherwise."""
    kind = TYPES.get(key)
    if kind is None:
        raise VcraftError(f"unknown setting '{key}'; known: {', '.join(TYPES)}")
    if kind in READERS:
        return READERS[kind](value)
    if kind in (tuple[str, ...], tuple[int, ...]):
        each = kind.__args__[0]
        if not isinstance(value, (list, tuple)):
            raise VcraftError(f"'{key}' must be a list, got {value!r}")
        return tuple(_scalar(f"{key}[{i}]", each, v) for i, v in enumerate(value))
    return _scalar(key, kind, value)


def _scalar(key: str, kind: type, value: Any) -> Any:
    if kind is str:
        if not isinstance(value, str):
            raise VcraftError(f"'{key}' must be text, got {value!r}")
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (kind is int and not (math.isfinite(value) and float(value).is_integer())):
        raise VcraftError(f"'{key}' must be a number ({kind.__name__}), got {value!r}")
    return kind(value)


def make_settings(config: Config, prompt: str | Sequence[str], **chosen: Any) -> Settings:
    """A checked `Settings` for `config`'s model: `chosen` values (None: not chosen) over the config's
    defaults; the seed defaults to 0 and the negative prompt to "". Several prompts (a list, or `prompts`) change
    along the video: from the frames `at`, else splitting it evenly. Raises VcraftError saying what to change."""
    if not isinstance(prompt, str):
        prompt, chosen = "", {**chosen, "prompts": prompt}
    given = {k: check_type(k, v) for k, v in {"prompt": prompt, **chosen}.items() if v is not None}
    model = config.model
    values = {"seed": 0, "negative": "", "control_stride": -1, "window": model.unet.temporal_length,
              "window_stride": 4, "prompts": (), "at": (), "motion_guidance": None, **dict.fromkeys(INPUT_FILES),
              **asdict(config.sampling), **given}
    if values["continues"] is not None:  # a continuation keeps its video's size and, unless told, its pace
        video = values["continues"]
        values = {**values, "height": video.frames.shape[1], "width": video.frames.shape[2],
                  **({"save_fps": max(1, round(video.fps))} if video.fps and "save_fps" not in given else {}), **given}
    if values["prompts"]:
        values = {**values, **_schedule(values["prompt"], values["prompts"], values["at"], values["frames"])}
    values["sampler"] = values["sampler"] or default_sampler(model)
    values["extend"] = values["extend"] or ("mask" if model.frame_conditioning else "replace")
    if values["overlap"] is None:
        values["overlap"] = model.unet.temporal_length // 4
    settings = Settings(**{k: values[k] for k in TYPES})  # the config's values are typed by its schema
    problem = _problem(settings, model)
    if problem:
        raise VcraftError(problem)
    return settings


def then_prompts(prompt: str, then: Sequence[str]) -> dict[str, Any]:
    """`prompts` (and `at`) of a prompt followed by `then` specs, each `PROMPT` (the video split evenly) or
    `FRAME:PROMPT` (the frame where it starts), as the command line and the web app take them."""
    starts, prompts = [0], [prompt]
    for spec in then:
        frame, colon, text = spec.partition(":")
        timed = bool(colon) and frame.strip().isdigit()
        starts.append(int(frame) if timed else None)
        prompts.append(text.strip() if timed else spec.strip())
    if any(a is None for a in starts[1:]) and not all(a is None for a in starts[1:]):
        raise VcraftError("give every --then as FRAME:PROMPT, or none (the video is then split evenly)")
    return {"prompts": prompts, **({"at": starts} if starts[-1] is not None else {})}


def _schedule(prompt: str, prompts: tuple[str, ...], at: tuple[int, ...], frames: int) -> dict[str, Any]:
    """The prompt, prompts and their first frames of a schedule: the prompt is the first of them (given as such, or
    not at all); one prompt is no schedule; without `at`, the prompts split the frames evenly."""
    if prompt.strip() and prompt != prompts[0]:
        raise VcraftError("give the prompt, or the prompts along the video starting with it, not another one")
    if at and len(at) != len(prompts):
        raise VcraftError(f"'at' gives {len(at)} frame(s) for {len(prompts)} prompts; give one first frame each")
    if len(prompts) == 1:
        return {"prompt": prompts[0], "prompts": (), "at": ()}
    return {"prompt": prompts[0], "prompts": prompts, "at": at or tuple(k * frames // len(prompts)
                                                                       for k in range(len(prompts)))}


def _schedule_problem(s: Settings, model: ModelConfig) -> str | None:
    """What is wrong with the prompts along the video, if anything."""
    from vcraft.sampling.long_video import window_prompts

    empty = next((k for k, p in enumerate(s.prompts) if not p.strip()), None)
    if empty is not None:
        return f"prompt {empty + 1} of the prompts along the video is empty; give some text"
    if s.at[0] != 0:
        return f"the first prompt starts at frame 0, not {s.at[0]}: give 'at' as 0, then where each next one starts"
    if any(b <= a for a, b in zip(s.at, s.at[1:])):
        return f"the prompts' first frames must increase: {', '.join(map(str, s.at))}"
    if s.at[-1] >= s.frames:
        return f"a prompt starts at frame {s.at[-1]}, beyond the video's {s.frames} frames (0 to {s.frames - 1})"
    if s.extend == "freenoise":
        return None
    clip = model.unet.temporal_length
    used = set(window_prompts(s.at, s.frames, clip, s.overlap, s.continues is not None))
    unused = next((k for k in range(len(s.prompts)) if k not in used), None)
    if unused is not None:
        return (f"prompt {unused + 1} (from frame {s.at[unused]}) would be no window's: each window of {clip} frames "
                f"takes the prompt of the middle of its new frames; give it more frames, or use --extend freenoise")
    return None


def _freenoise_problem(s: Settings, model: ModelConfig) -> str | None:
    clip = model.unet.temporal_length
    checks = [
        (model.unet.family == "videocrafter" and model.unet.temporal_attention,
         "--extend freenoise needs a VideoCrafter1/2 model or the embedded model (its temporal attention)"),
        (s.continues is None, "--extend freenoise makes a video whole; to continue one use --extend mask or replace"),
        (s.control_video is None and s.control_depth is None, "--extend freenoise cannot take a control video"),
        (1 <= s.window <= clip, f"--window must be between 1 and {clip} (the model's clip), got {s.window}"),
        (1 <= s.window_stride <= s.window, f"--window-stride must be between 1 and --window ({s.window}), got "
                                           f"{s.window_stride}"),
    ]
    return next((message for ok, message in checks if not ok), None)


def _few_step_problem(s: Settings, model: ModelConfig) -> str | None:
    """What does not fit a consistency sampler or a UNet that takes its guidance scale as an input."""
    from vcraft.sampling.consistency import ORIGIN_STEPS

    few_step = bool(model.unet.guidance_embedding)
    checks = [
        (s.sampler != "consistency" or few_step, "--sampler consistency is for few-step models, whose UNet takes the "
                                                 "guidance scale as an input (vc2-turbo, vc2-turbo-v2)"),
        (s.sampler == "consistency" or not few_step, "this few-step model takes its guidance scale as an input and is "
                                                     "sampled with --sampler consistency (its default)"),
        (s.sampler != "consistency" or s.steps <= ORIGIN_STEPS,
         f"--steps must be between 1 and {ORIGIN_STEPS} with the consistency sampler, got {s.steps}"),
        (not few_step or not s.negative.strip(), "this few-step model makes no unconditional pass (its guidance is "
                                                 "an input of the UNet), so it takes no negative prompt"),
        (s.motion_guidance is None or model.unet.motion_embedding > 0,
         "--motion-guidance needs a model with motion guidance (vc2-turbo-v2)"),
        (s.motion_guidance is None or (math.isfinite(s.motion_guidance) and s.motion_guidance >= 0),
         f"--motion-guidance must be 0 or more, got {s.motion_guidance}"),
    ]
    return next((message for ok, message in checks if not ok), None)


def _problem(s: Settings, model: ModelConfig) -> str | None:
    from vcraft.config import SAMPLERS

    m = spatial_multiple(model)
    clip = model.unet.temporal_length
    timesteps = model.schedule.timesteps
    checks = [
        (s.prompt.strip() != "", "a prompt is empty; give some text to turn into a video"),
        (0 <= s.seed <= MAX_SEED, f"seed {s.seed} is out of range (0 to 2^63 - 1)"),
        (s.frames >= 1, f"--frames must be at least 1, got {s.frames}"),
        (s.height >= m and s.height % m == 0, f"--height must be a positive multiple of {m}, got {s.height}"),
        (s.width >= m and s.width % m == 0, f"--width must be a positive multiple of {m}, got {s.width}"),
        (s.height <= MAX_SIDE, f"--height must be at most {MAX_SIDE}, got {s.height}"),
        (s.width <= MAX_SIDE, f"--width must be at most {MAX_SIDE}, got {s.width}"),
        (s.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}, got {s.sampler}"),
        (1 <= s.steps <= timesteps, f"--steps must be between 1 and {timesteps}, got {s.steps}"),
        (math.isfinite(s.guidance) and s.guidance >= 0, f"--guidance must be 0 or more, got {s.guidance}"),
        (0 <= s.guidance_min_t <= timesteps,
         f"--guidance-min-t must be between 0 and {timesteps}, got {s.guidance_min_t}"),
        (math.isfinite(s.eta) and s.eta >= 0, f"--eta must be 0 or more, got {s.eta}"),
        (s.fps >= 1, f"--fps must be at least 1, got {s.fps}"),
        (s.save_fps > 0, f"--save-fps must be positive, got {s.save_fps}"),
        (s.extend in EXTENDS, f"--extend must be one of {', '.join(EXTENDS)}, got {s.extend}"),
        (s.extend != "mask" or model.frame_conditioning,
         "--extend mask needs a model trained to continue videos (frame_conditioning); use --extend replace"),
        (1 <= s.overlap < clip, f"--overlap must be between 1 and {clip - 1} (the model makes {clip} frames at "
                                f"a time), got {s.overlap}"),
        (s.image is not None or model.image_encoder is None,
         "this model makes videos from a picture: give one with --image FILE (an 'image' column in prompt files)"),
        (s.image is None or model.image_encoder is not None,
         "--image needs an image-to-video model (such as vc1-i2v-512); this one makes videos from text alone"),
    ]
    control = s.control_video or s.control_depth
    if control is not None:
        flag = "--control-video" if s.control_video is not None else "--control-depth"
        checks = [
            (model.adapter is not None, f"{flag} needs a model with a control adapter (vc0-256-depth, or shapes); "
                                        "this one has none"),
            (s.control_video is None or s.control_depth is None, "give --control-video or --control-depth, not both"),
            (s.control_depth is None or model.depth is not None,
             "--control-depth needs a depth-controlled model (vc0-256-depth); give this one --control-video"),
            (s.continues is None, f"{flag} cannot be combined with --continue"),
            (s.control_stride == -1 or s.control_stride >= 1, f"--control-stride must be -1 or at least 1, got "
                                                              f"{s.control_stride}"),
            (len(control.frames) >= s.frames, f"{flag}: the video has {len(control.frames)} frames and the request "
                                              f"needs {s.frames}; give a longer video or fewer --frames"),
        ] + checks
    if s.continues is not None:
        shape = s.continues.frames.shape
        checks = [
            ((s.height, s.width) == shape[1:3], f"--continue: the video is {shape[1]}x{shape[2]} (height x width); "
                                                "it is continued at its own size, so give no --height or --width"),
            (shape[1] % m == 0 and shape[2] % m == 0, f"--continue: the video is {shape[1]}x{shape[2]}; this model "
                                                      f"continues videos whose sides are multiples of {m}"),
            (shape[0] >= s.overlap, f"--continue: the video has {shape[0]} frame(s); continuing it needs at least "
                                    f"--overlap ({s.overlap})"),
        ] + checks
    problem = next((message for ok, message in checks if not ok), None) or _few_step_problem(s, model)
    if problem is None and s.extend == "freenoise":
        problem = _freenoise_problem(s, model)
    if problem is None and s.prompts:
        problem = _schedule_problem(s, model)
    return problem


def default_sampler(model: ModelConfig) -> str:
    """The sampler a model's videos get unless its config or the user picks one."""
    return "consistency" if model.unet.guidance_embedding else "ddim"


def made_at_once(s: Settings, model: ModelConfig) -> bool:
    """Whether the video of `s` is made in one run over all its frames (FreeNoise, past the model's clip) rather than
    window by window."""
    return s.extend == "freenoise" and s.frames > model.unet.temporal_length


def spatial_multiple(model: ModelConfig) -> int:
    """Heights and widths must be multiples of this: the VAE's and the UNet's downsampling combined."""
    return 2 ** (len(model.autoencoder.ch_mult) - 1) * 2 ** (len(model.unet.channel_mult) - 1)

