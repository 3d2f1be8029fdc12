"""`vcraft train lora`: a LoRA trained on your own clips, for any preset, with the model frozen.

PEFT adds the LoRA layers (`inject_adapter_in_model`: rank, alpha, target layers by name); the loss is the
recipe's own (`stages.diffusion_loss`: the sampler's `unet_inputs`, the model's noise schedule), with no caption
dropout and no given frames; with `decoder`, plus the autoencoder's reconstruction loss for the decoder's LoRA layers
(`redraw_loss`). The run folder holds:

    run/lora.pt                the LoRA's weights (and with `ema` their moving average), optimiser, RNG state and
                               step, every `checkpoint_every` steps
    run/train.log              loss, learning rate and speed every 25 steps
    run/validation/            the validation prompts' videos, every `validate_every` steps (rendered by the caller)
    run/lora.safetensors       the result

The file is in the PEFT/diffusers layout (`<module path from the checkpoint's root>.lora_A.weight` / `.lora_B.weight`,
rank and alpha in diffusers' `lora_adapter_metadata`): the one of vcraft's LoRA formats that names the module
paths the official checkpoints use and carries its own scale; `--lora` reads it (loaders/lora.py).
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from vcraft import __version__
from vcraft.config import Config, DiffusionTraining
from vcraft.errors import VcraftError
from vcraft.loaders.checkpoints import save_state_dict, stored_metadata
from vcraft.loaders.components import BY_NAME, Models
from vcraft.loaders.download import sha256_of
from vcraft.models.autoencoder import VideoAutoencoder, trainable_decoder
from vcraft.pipeline.api import TextToVideo
from vcraft.train.data import encode_dataset, to_pixels
from vcraft.train.loop import Log, device_of, load_state, lr_at, optimiser, run_steps, save_state, set_lr
from vcraft.train.stages import diffusion_loss, frozen_config, frozen_model

# The attention and feed-forward projections of every transformer block, as VideoLoRA targets them (its files
# cover the spatial attentions' q, k, v and the feed-forward's first projection).
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
# --text: the token embeddings, so that a trigger's own words learn what they mean (as textual inversion does);
# adapting the text tower's projections too made the embedded model's LoRA diverge (docs/embedded-model.md).
TEXT_TARGETS = ("token_embedding",)
# --decoder: every 3x3 convolution of the autoencoder's decoder (a regular expression over the autoencoder's module
# names, so that the encoder's layers of the same names stay as they are).
DECODER_TARGETS = r"decoder\.(.*\.)?(conv_in|conv1|conv2|conv|conv_out)"
DECODER_FRAMES = 4  # frames of each clip of a batch that the decoder redraws a step
ADAPTED = ("unet", "text_encoder", "autoencoder")  # the components a LoRA may adapt, in this order in its file
SCHEDULES = ("cosine", "constant")
PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ADAPTABLE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding)  # PEFT's LoRA


@dataclass(frozen=True)
class LoRATraining:
    """The options of one LoRA training run (the command line's flags), checked by `check`."""

    rank: int = 8
    alpha: float = 8.0  # the LoRA's update is scaled by alpha / rank
    lr: float = 1e-4
    schedule: str = "cosine"  # after the warm-up: cosine to zero, or constant
    warmup: int = 0
    steps: int = 500
    batch_size: int = 1
    accumulate: int = 1  # micro-batches per optimiser step
    targets: tuple[str, ...] = DEFAULT_TARGETS  # UNet layers whose names end with one of these
    seed: int = 0
    checkpoint_every: int = 100
    validate_every: int = 0  # 0: no validation videos
    mixed_precision: str = "no"  # bf16 or fp16 autocast on a GPU
    trigger: str = ""  # appended to every caption, as written
    text: bool = False  # also adapt the text encoder's token embeddings (TEXT_TARGETS)
    # Videos the model itself makes from the captions without the trigger, trained on beside the clips (DreamBooth's
    # prior preservation): the LoRA then changes what the trigger asks for and leaves the rest as it was.
    prior: int = 0
    # Also adapt the autoencoder's decoder, trained to redraw the clips' frames from their latents: for a look the
    # decoder cannot draw (thin lines, a texture), which no change of the UNet alone can give.
    decoder: bool = False
    # Timesteps drawn as T * u**k, u uniform: 1 is uniform, above 1 favours the clean end (edges and corners).
    timestep_exponent: float = 1.0
    # Min-SNR-gamma (the recipe's `min_snr`): an error in the clean latents weighs min(SNR, gamma); None: plain MSE.
    min_snr: Optional[float] = None
    # Decay of an exponential moving average of the LoRA's weights, which the file then holds (0: the last weights).
    ema: float = 0.0

    def check(self, device: torch.device) -> None:
        problems = [
            (self.rank >= 1, f"--rank must be at least 1, got {self.rank}"),
            (self.alpha > 0, f"--alpha must be positive, got {self.alpha}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule}"),
            (0 <= self.warmup < self.steps, f"--warmup must be between 0 and --steps - 1, got {self.warmup}"),
            (self.steps >= 1 and self.batch_size >= 1 and self.accumulate >= 1,
             "--steps, --batch-size and --accumulate must be at least 1"),
            (self.checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {self.checkpoint_every}"),
            (self.validate_every >= 0, f"--validate-every must be 0 or more, got {self.validate_every}"),
            (self.prior >= 0, f"--prior must be 0 or more, got {self.prior}"),
            (self.timestep_exponent > 0, f"--timestep-exponent must be positive, got {self.timestep_exponent}"),
            (self.min_snr is None or self.min_snr > 0, f"--min-snr must be positive, got {self.min_snr}"),
            (0 <= self.ema < 1, f"--ema must be at least 0 and below 1, got {self.ema}"),
            (bool(self.targets), "give at least one --target"),
            (self.mixed_precision in PRECISIONS, f"--mixed-precision must be one of {', '.join(PRECISIONS)}"),
            (self.mixed_precision == "no" or device.type == "cuda", "--mixed-precision needs a GPU (--device cuda)"),
        ]
        problem = next((message for ok, message in problems if not ok), None)
        if problem:
            raise VcraftError(problem)

    def lr_at(self, step: int) -> float:
        if self.schedule == "constant":
            return self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup else self.lr
        return lr_at(step, self.steps, self.lr, self.warmup)


def check_targets(unet: torch.nn.Module, targets: tuple[str, ...]) -> None:
    """Each target names at least one UNet layer (by PEFT's own matching, as `add_lora` will), and only layers a LoRA
    can adapt."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    for target in targets:
        config = LoraConfig(target_modules=[target])
        found = [m for n, m in unet.named_modules() if check_target_module_exists(config, n)]
        if not found:
            raise VcraftError(f"--target {target} names no layer of the UNet (give the end of a layer's name, "
                              "such as to_q or in_layers.2)")
        wrong = sorted({type(m).__name__ for m in found if not isinstance(m, ADAPTABLE)})
        if wrong:
            raise VcraftError(f"--target {target} names {', '.join(wrong)} layers, which a LoRA cannot adapt "
                              "(linear, convolution and embedding layers only)")


def add_lora(models: Models, options: LoRATraining) -> list[torch.nn.Parameter]:
    """PEFT's LoRA layers around the target layers of the UNet (with `text` of the text encoder, with `decoder` of the
    autoencoder's decoder; B at zero: the model is unchanged until trained); their parameters, the only trainable
    ones."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(options.seed)
    targets = {"unet": options.targets, "text_encoder": TEXT_TARGETS if options.text else (),
               "autoencoder": DECODER_TARGETS if options.decoder else ()}
    for name, names in targets.items():
        if not names:
            continue
        regex = isinstance(names, str)  # PEFT takes a regular expression over module names, or a list of name ends
        config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=0.0,
                            target_modules=names if regex else list(names))
        inject_adapter_in_model(config, getattr(models, name))
    return [p for name in ADAPTED for p in getattr(models, name).parameters() if p.requires_grad]


def lora_state(models: Models) -> dict[str, torch.Tensor]:
    """The LoRA's weights in the official layout: each layer's path from the checkpoint's root
    (`model.diffusion_model.....to_q.lora_A.weight`)."""
    from peft import get_peft_model_state_dict

    state = {}
    for name in ADAPTED:
        module = getattr(models, name)
        if any(p.requires_grad for p in module.parameters()):
            state.update({BY_NAME[name].prefix + k: v.detach().cpu().clone()
                          for k, v in get_peft_model_state_dict(module).items()})
    return state


def _load_lora_state(models: Models, state: dict[str, torch.Tensor]) -> None:
    """A checkpoint's LoRA weights (as `lora_state` gives them) put back into the PEFT layers."""
    from peft import set_peft_model_state_dict

    for name in ADAPTED:
        prefix = BY_NAME[name].prefix
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if own:
            set_peft_model_state_dict(getattr(models, name), own)


def _training(models: Models, on: bool) -> None:
    """The adaptable components in training mode (`on`) or in eval mode, as validation renders."""
    for name in ADAPTED:
        getattr(models, name).train(on)


def train_lora(cfg: Config, ckpt: Path, videos: np.ndarray, captions: list[str], options: LoRATraining, run: Path,
               log: Log, device: torch.device = torch.device("cpu"), resume: bool = False,
               on_checkpoint: Optional[Callable[[TextToVideo, int], None]] = None,
               stop_after: Optional[int] = None) -> Optional[Path]:
    """Train a LoRA of the model `cfg`/`ckpt` on clips `videos` (uint8 `[n, T, H, W, 3]`, read as the model takes
    them) with `captions` (the trigger already appended) in folder `run`. `on_checkpoint(pipe, step)` runs at every
    validation step, with the model as it is then (the caller renders its prompts). Returns the LoRA's file, or None
    when `stop_after` steps ended the call early."""
    options.check(device)
    checkpoint = run / "lora.pt"
    if checkpoint.is_file() and not resume:
        raise VcraftError(f"{run} holds a training run already: pass --resume to continue it, or choose another -o")
    models = frozen_model(cfg, ckpt, device)
    check_targets(models.unet, options.targets)  # before the prior videos, which take minutes
    run.mkdir(parents=True, exist_ok=True)
    # The pipeline over the same modules: the LoRA layers added below are in it too.
    pipe = TextToVideo(replace(cfg, model=frozen_config(cfg)), models, device, torch.float32)
    if options.prior:
        videos, captions = _with_prior(pipe, videos, captions, options, run, log)
    latents = encode_dataset(models.autoencoder, videos) * cfg.model.scale_factor
    log(f"lora: {len(videos)} clips of {videos.shape[1]} frames at {videos.shape[2]}x{videos.shape[3]} encoded")
    if options.decoder:
        models.autoencoder.decoder = trainable_decoder(cfg.model.autoencoder, models.autoencoder.decoder)
    params = add_lora(models, options)
    opt = optimiser(params, options.lr, 0.0)
    torch.manual_seed(options.seed + 1)
    start, state = 0, load_state(checkpoint) if resume else None
    if options.ema and state is not None and state.get("ema"):
        _load_lora_state(models, state["ema"])
    average = [p.detach().clone() for p in params] if options.ema else []  # the moving average, from the start
    if state is not None:
        _load_lora_state(models, state["model"])
        opt.load_state_dict(state["optimiser"])
        torch.set_rng_state(state["rng"])
        start = int(state["step"])
    settings = DiffusionTraining(caption_dropout=0.0, given_frames_prob=0.0, min_snr=options.min_snr,
                                 timestep_exponent=options.timestep_exponent)
    autocast = torch.autocast("cuda", PRECISIONS[options.mixed_precision]) if options.mixed_precision != "no" \
        else nullcontext()

    def step(i: int) -> tuple[float, float]:
        lr = set_lr(opt, options.lr_at(i))
        total = 0.0
        for _ in range(options.accumulate):
            idx = torch.randint(len(latents), (options.batch_size,))
            batch = latents[idx].to(device)
            with autocast:
                loss = diffusion_loss(models, cfg, batch, [captions[k] for k in idx.tolist()], settings)
                if options.decoder:
                    loss = loss + redraw_loss(models.autoencoder, batch, videos[idx.numpy()])
                loss = loss / options.accumulate
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for mean, p in zip(average, params):
                mean.lerp_(p, 1 - options.ema)
        return total, lr

    def save(done: int) -> None:
        own = lora_state(models)
        with _holding(params, average):  # the average, which validation renders and the file will hold
            save_state({"model": own, "ema": lora_state(models) if average else {}, "optimiser": opt.state_dict(),
                        "rng": torch.get_rng_state(), "step": done}, checkpoint)
            if on_checkpoint is not None and options.validate_every and done % options.validate_every == 0:
                _training(models, False)
                on_checkpoint(pipe, done)
                _training(models, True)

    _training(models, True)
    every = options.checkpoint_every if not options.validate_every else int(np.gcd(options.checkpoint_every,
                                                                                  options.validate_every))
    if not run_steps("lora", run, start, options.steps, stop_after, every, step, save, log):
        return None
    with _holding(params, average):
        return export(models, cfg, ckpt, options, run / "lora.safetensors")


@contextmanager
def _holding(params: list[torch.nn.Parameter], values: list[torch.Tensor]) -> Iterator[None]:
    """The parameters hold `values` (the weights' moving average) inside the block, their own outside it; no
    change when `values` is empty."""
    own = [p.detach().clone() for p in params] if values else []
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, own):
                p.copy_(v)


def redraw_loss(autoencoder: VideoAutoencoder, latents: torch.Tensor, videos: np.ndarray) -> torch.Tensor:
    """The autoencoder's own reconstruction loss (L1 + L2) of DECODER_FRAMES random frames of each clip, decoded from
    their latents (scaled `[b, c, T, h, w]`) and compared with the clips' pixels (uint8 `[b, T, H, W, 3]`)."""
    frames = torch.randint(latents.shape[2], (DECODER_FRAMES,))
    device = device_of(autoencoder)
    redrawn = autoencoder.decode(latents[:, :, frames].to(device))
    target = to_pixels(videos[:, frames.numpy()]).to(device)
    return F.l1_loss(redrawn, target) + F.mse_loss(redrawn, target)


def _with_prior(pipe: TextToVideo, videos: np.ndarray, captions: list[str], options: LoRATraining, run: Path,
                log: Log) -> tuple[np.ndarray, list[str]]:
    """The clips and `options.prior` videos the frozen model makes from the captions (in turn) without the trigger,
    at the clips' size and length, each from its own seed. Made once: kept in the run folder for `--resume`."""
    from safetensors.torch import load_file

    plain = [c[:len(c) - len(options.trigger)] if options.trigger and c.endswith(options.trigger) else c
             for c in captions]
    prompts = [plain[k % len(plain)] for k in range(options.prior)]
    _, frames, height, width = videos.shape[:4]
    path = run / "prior.safetensors"
    made_by = json.dumps({"prompts": prompts, "seed": options.seed, "size": [frames, height, width]})
    if path.is_file() and stored_metadata(path).get("made_by") == made_by:
        made = load_file(path)["videos"].numpy()
        log(f"lora: {options.prior} prior videos read from {path.name}")
    else:
        made = np.stack([pipe(p, seed=options.seed * 10**6 + k, frames=frames, height=height, width=width)
                         for k, p in enumerate(prompts)])
        save_state_dict({"videos": torch.from_numpy(made)}, path, metadata={"made_by": made_by})
        log(f"lora: {options.prior} prior videos made by the model itself")
    return np.concatenate([videos, made]), captions + prompts


def export(models: Models, cfg: Config, ckpt: Path, options: LoRATraining, path: Path) -> Path:
    """The LoRA as safetensors in the PEFT layout under the official prefix, with what made it in its metadata."""
    metadata = {"format": "vcraft-lora", "base_model": cfg.name, "base_sha256": sha256_of(ckpt),
                "trigger": options.trigger, "rank": str(options.rank), "alpha": str(options.alpha),
                "steps": str(options.steps), "targets": ",".join(options.targets + (TEXT_TARGETS if options.text
                                                                                      else ())),
                "decoder": str(options.decoder).lower(), "ema": str(options.ema),
                "vcraft_version": __version__,
                "lora_adapter_metadata": json.dumps({"r": options.rank, "lora_alpha": options.alpha})}
    save_state_dict(lora_state(models), path, metadata=metadata)
    return path
