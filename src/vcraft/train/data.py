"""The training data: shapes clips drawn from seeds, their time-reversed copies, clips that turn, pixels and latents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vcraft.config import Config, TrainConfig
from vcraft.data.shapes import TRAIN_SCENES, Scene, caption, sample_turn
from vcraft.data.shapes import sample as sample_clip
from vcraft.errors import VcraftError
from vcraft.models.autoencoder import VideoAutoencoder
from vcraft.train.loop import device_of

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "growing": "shrinking",
            "shrinking": "growing"}


def train_config(cfg: Config) -> TrainConfig:
    """The config's train section, refused where the shapes data cannot fit it."""
    if cfg.train is None:
        raise VcraftError(f"config '{cfg.name}' has no train section")
    if cfg.sampling.height != cfg.sampling.width:
        raise VcraftError("the shapes data is square: sampling.height must equal sampling.width")
    return cfg.train


def make_dataset(cfg: Config) -> tuple[np.ndarray, list[str], list[Scene]]:
    """The training clips as uint8 `[n, T, H, W, 3]`, their captions and scenes; clip k is drawn from
    seed `train.seed * 10**6 + k`, so the set is the same on every machine."""
    s, tc = cfg.sampling, train_config(cfg)
    videos = np.empty((tc.videos, s.frames, s.height, s.width, 3), dtype=np.uint8)
    captions, scenes = [], []
    for k in range(tc.videos):
        clip, text, scene = sample_clip(tc.seed * 10**6 + k, s.frames, s.height)
        videos[k] = np.round(clip * 255)
        captions.append(text)
        scenes.append(scene)
    return videos, captions, scenes


@dataclass
class TurnClips:
    """Clips whose object changes direction: latents (scaled), the new direction's captions, and how many first frames
    each is given (those before the turn)."""

    latents: torch.Tensor
    captions: list[str]
    given: torch.Tensor


def make_turns(cfg: Config) -> tuple[np.ndarray, list[str], torch.Tensor]:
    """`train.turns` clips that turn as uint8 `[n, T, H, W, 3]`, their captions and their frames before the turn
    (at most `train.diffusion.max_given_frames`); clip k is drawn from seed `train.seed * 10**6 + 500000 + k`."""
    s, tc = cfg.sampling, train_config(cfg)
    videos = np.empty((tc.turns, s.frames, s.height, s.width, 3), dtype=np.uint8)
    captions, given = [], []
    for k in range(tc.turns):
        clip, text, _, before = sample_turn(tc.seed * 10**6 + 500000 + k, s.frames, s.height,
                                            min(tc.diffusion.max_given_frames, s.frames - 1))
        videos[k] = np.round(clip * 255)
        captions.append(text)
        given.append(before)
    return videos, captions, torch.tensor(given)


def with_turns(latents: torch.Tensor, captions: list[str], turns: TurnClips, share: float
               ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """A batch with a random `share` of its clips replaced by turning clips, and the frames each is given (0: the
    loss draws it as for any clip)."""
    b = len(latents)
    picked = torch.rand(b) < share
    j = torch.randint(len(turns.latents), (b,))
    latents = torch.where(picked[:, None, None, None, None], turns.latents[j], latents)
    captions = [turns.captions[k] if p else text for text, p, k in zip(captions, picked.tolist(), j.tolist())]
    return latents, captions, turns.given[j] * picked


def reversed_clips(latents: torch.Tensor, scenes: list[Scene], seed: int
                   ) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """Free extra data: a clip played backwards is exactly a clip of the opposite motion (the generator's
    positions, speeds and sizes are symmetric), and latents are per frame, so reversing them is exact.
    Clips whose reversed scene is held out are left out, so no held-out combination leaks in."""
    keep, captions, flipped = [], [], []
    for k, scene in enumerate(scenes):
        other = Scene(scene.colour, scene.shape, OPPOSITE[scene.motion])
        if other in TRAIN_SCENES:
            keep.append(k)
            captions.append(caption(other, np.random.default_rng([seed, k])))
            flipped.append(other)
    return latents[keep].flip(2), captions, flipped


def to_pixels(videos: np.ndarray) -> torch.Tensor:
    """uint8 `[n, T, H, W, 3]` -> float `[n, 3, T, H, W]` in [-1, 1]."""
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


@torch.inference_mode()
def encode_dataset(vae: VideoAutoencoder, videos: np.ndarray, batch: int = 8) -> torch.Tensor:
    """Posterior means of every clip, unscaled: `[n, c, T, h, w]`."""
    vae.to(memory_format=torch.channels_last)  # a quarter less time for these convolutions on CPUs
    parts = [vae.encode_moments(to_pixels(videos[i:i + batch]).to(device_of(vae))).chunk(2, dim=1)[0].cpu()
             for i in range(0, len(videos), batch)]
    vae.to(memory_format=torch.contiguous_format)
    return torch.cat(parts).contiguous()
