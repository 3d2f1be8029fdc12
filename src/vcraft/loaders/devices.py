"""Choosing the device and dtype a model runs on."""

from __future__ import annotations

import torch

from vcraft.errors import VcraftError
from vcraft.loaders.checkpoints import DTYPES


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device must exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VcraftError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VcraftError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise VcraftError("--device mps was asked for but MPS is not available; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 (else fp16) on CUDA, fp16 on MPS, fp32 on the CPU."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise VcraftError(f"unknown dtype '{dtype}'; use auto, fp32, fp16 or bf16")
    return DTYPES[dtype]
