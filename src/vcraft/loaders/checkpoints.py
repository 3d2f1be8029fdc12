"""Safe checkpoint I/O: official Lightning `.ckpt` (weights only, never arbitrary pickle) and safetensors.

vcraft keeps the official key layout in its own files, so `vcraft convert` only changes the container
and, optionally, the dtype. Placing the tensors into the modules is strict: every weight of every component
(loaders/components.py) must be present with the right shape, and nothing may be left over.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from vcraft.errors import VcraftError
from vcraft.loaders.components import SCHEDULE_KEYS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
def load_state_dict(path: str | os.PathLike, listed: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors on the CPU without running any code stored in it. With `listed`, a `.pt` file may
    also hold an unnamed list of tensors, returned keyed "0", "1", ... (a T2V-Turbo LoRA)."""
    path = Path(path)
    if not path.is_file():
        raise VcraftError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return _read_safetensors(path)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise VcraftError(f"cannot read {path}: not a valid safetensors file ({_first_line(exc)})") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names the callable a file tries to import; anything else is damage.
        blocked = re.search(r"GLOBAL (\S+)", str(exc))
        if blocked is None:
            raise VcraftError(f"cannot read {path}: corrupt or not a PyTorch checkpoint") from None
        raise VcraftError(
            f"refusing to load {path}: it holds Python objects other than tensors ({blocked.group(1)}), "
            "which could run code; only plain weight checkpoints are accepted"
        ) from None
    except Exception as exc:
        raise VcraftError(f"cannot read {path}: not a valid PyTorch checkpoint ({_first_line(exc)})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if listed and isinstance(data, list):
        data = {str(i): value for i, value in enumerate(data)}
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise VcraftError(f"{path} is not a state dict of tensors")
    return data


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, each read into memory of its own. safetensors' `load_file` returns views
    of one mapping of the whole file, which stays resident until the last tensor is gone; with separate
    tensors, loading fp16 weights as fp32 frees each fp16 tensor once converted (see `assign`), so it peaks
    near the fp32 size instead of at both. The format is an 8-byte header length, a JSON header, the data."""
    tensors = {}
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        header, _ = _safetensors_header(f, file_size)
        data = f.tell()
        for key, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            dtype, shape = SAFETENSORS_DTYPES[info["dtype"]], [int(n) for n in info["shape"]]
            begin, end = info["data_offsets"]
            # Checked before allocating, so a damaged header cannot ask for more memory than the file holds.
            if min(shape, default=0) < 0 or not 0 <= begin <= end <= file_size - data \
                    or end - begin != math.prod(shape) * dtype.itemsize:
                raise ValueError(f"tensor '{key}' has bytes {begin}..{end} for shape {shape}")
            tensor = torch.empty(shape, dtype=dtype)
            f.seek(data + begin)
            if end > begin and f.readinto(tensor.reshape(-1).view(torch.uint8).numpy()) != end - begin:
                raise ValueError(f"file ends inside tensor '{key}'")
            tensors[key] = tensor
    return tensors


def _safetensors_header(f, file_size: int) -> tuple[dict, dict]:
    """A safetensors header (an 8-byte length, then JSON): its tensors' entries and its `__metadata__`; leaves `f` at
    the data."""
    length = int.from_bytes(f.read(8), "little")
    if not 2 <= length <= min(100 * 2**20, file_size - 8):
        raise ValueError(f"header length {length}")
    header = json.loads(f.read(length))
    return header, header.pop("__metadata__", None) or {}


def stored_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's `__metadata__` (text keys and values); empty for other files or none."""
    if path.suffix != ".safetensors":
        return {}
    with open(path, "rb") as f:
        metadata = _safetensors_header(f, path.stat().st_size)[1]
    return {str(k): str(v) for k, v in metadata.items()}


def stored_dtypes(path: Path) -> list[str]:
    """The dtypes of a checkpoint's weights (schedule buffers aside), read without loading the weights where
    the format allows: a safetensors header, or a `.ckpt` mapped into memory."""
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            header, _ = _safetensors_header(f, path.stat().st_size)
        return sorted({str(SAFETENSORS_DTYPES.get(info["dtype"], info["dtype"])).removeprefix("torch.")
                       for key, info in header.items() if key not in SCHEDULE_KEYS})
    state = load_state_dict(path)
    return sorted({str(v.dtype).removeprefix("torch.") for k, v in state.items() if k not in SCHEDULE_KEYS})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def check_fits(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Every weight of `module` is in `state` with its shape, and nothing else is."""
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            problems.append(f"{len(wrong)} with another shape (e.g. {k}: {list(state[k].shape)} in the file, "
                            f"{list(expected[k].shape)} in the model)")
        raise VcraftError(f"{source} does not fit the {what} of this config: {'; '.join(problems)}")


def assign(module: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> None:
    """Put `state`'s tensors into `module` (built on the meta device, checked with `check_fits`), converting
    them to `dtype` one at a time and emptying `state` as it goes: a tensor read in another dtype is freed
    as soon as its converted copy exists, so loading never holds two copies of the weights."""
    converted = {}
    for key in list(state):
        value = state.pop(key)
        converted[key] = value.to(dtype) if dtype is not None and value.is_floating_point() else value
    module.load_state_dict(converted, strict=True, assign=True)


def check_schedule(buffers: dict[str, torch.Tensor], alphas_cumprod: torch.Tensor, scale_arr_full: torch.Tensor,
                   source: str) -> None:
    """The stored schedule buffers, where present, must be the ones this config computes."""
    for key, ours in (("alphas_cumprod", alphas_cumprod), ("scale_arr", scale_arr_full)):
        theirs = buffers.get(key)
        if theirs is None:
            continue
        same_shape = theirs.shape == ours.shape
        if not same_shape or (not theirs.is_meta and not torch.allclose(theirs.float(), ours, rtol=1e-4, atol=1e-6)):
            raise VcraftError(f"{source} was trained with another noise schedule than this config "
                              f"({key}: {list(theirs.shape)} values in the file, {list(ours.shape)} here)")


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it
    os.umask(mask)
    return mask


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike, dtype: str | None = None,
                    metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors, atomically (temporary name, then rename). `dtype` applies to the
    weights; schedule buffers stay float32, so they can still be checked against the config."""
    from safetensors.torch import save_file

    path = Path(path)
    target = DTYPES[dtype] if dtype else None
    cast = target is not None
    out = {k: (v.to(target) if cast and v.is_floating_point() and k not in SCHEDULE_KEYS else v).contiguous()
           for k, v in state.items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(out, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates its files owner-only, whatever the umask
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
