"""MiDaS DPT-hybrid (models/depth.py) against VideoControl's depth numbers (../shared/reference section 8,
`tiny/vc0_depth`): the original file's keys, the raw depth of one frame, the normalised depth of a clip, and the
full-size key layout."""

from __future__ import annotations

import json

import pytest
import torch
from reference import assert_close, reference_dir
from safetensors.torch import load_file

from vcraft.config import DepthConfig
from vcraft.errors import VcraftError
from vcraft.models.adapter import normalise_frames
from vcraft.models.depth import DepthEstimator, depth_maps

MIDAS_PREFIX = "depth_stage_model.model."
_cache: dict = {}


def tiny_sizes() -> DepthConfig:
    sizes = json.loads((reference_dir() / "tiny" / "vc0_depth" / "midas_tiny.json").read_text())
    assert DepthConfig(**sizes["official"]) == DepthConfig()  # vcraft's defaults are the official sizes
    return DepthConfig(**{key: value for key, value in sizes.items() if key not in ("official", "kept")})


def tiny_estimator() -> DepthEstimator:
    if "estimator" not in _cache:
        estimator = DepthEstimator(tiny_sizes())
        file = load_file(reference_dir() / "tiny" / "vc0_depth" / "dpt_hybrid_tiny.safetensors")
        estimator.load_state_dict(estimator.official_keys(file), strict=True)
        _cache["estimator"] = estimator.eval()
    return _cache["estimator"]


def cases() -> dict[str, torch.Tensor]:
    if "cases" not in _cache:
        _cache["cases"] = load_file(reference_dir() / "tiny" / "vc0_depth" / "cases.safetensors")
    return _cache["cases"]


def test_the_original_files_load_strictly_and_give_the_raw_depth():
    estimator = tiny_estimator()
    twin = torch.load(reference_dir() / "tiny" / "vc0_depth" / "dpt_hybrid_tiny.pt", weights_only=True)
    mapped = estimator.official_keys(twin)
    assert mapped.keys() == estimator.state_dict().keys()
    assert all(torch.equal(value, mapped[name]) for name, value in estimator.state_dict().items())
    DepthEstimator(tiny_sizes()).load_state_dict(mapped, strict=True)
    frame = cases()["midas_input.input"]  # frame 0 of the control clip, [1, 3, 64, 64]
    resized = torch.nn.functional.interpolate(frame, size=(384, 384), mode="bicubic", align_corners=False)
    assert_close(resized, cases()["midas_input.output"], 1e-5, 1e-5, 1e-6, "midas_input")
    with torch.no_grad():
        depth = estimator(frame)
    assert_close(depth, cases()["depth_raw.output"], 1e-5, 1e-5, 1e-6, "depth_raw")  # section 3: one forward


def test_normalised_depth_of_the_clip():
    frames = cases()["video_load.frames"]  # [3, 8, 64, 64], stored contiguous (decord's tensor was channels-last)
    depth = normalise_frames(depth_maps(tiny_estimator(), frames[None], (64, 64)))
    ref = cases()["depth.output"]
    assert depth.shape == ref.shape == (1, 1, 8, 64, 64)
    assert float((depth - ref).abs().max()) <= 1e-4  # section 8: the per-frame min-max divides by the range
    assert torch.equal(depth.amin(dim=(3, 4)), -torch.ones(1, 1, 8)) and bool((depth.amax(dim=(3, 4)) > 1 - 1e-6).all())
    channels_last = frames.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)  # as load_video returns it
    assert torch.equal(normalise_frames(depth_maps(tiny_estimator(), channels_last[None], (64, 64))), depth)


def test_the_official_sizes_take_the_manifests_keys():
    manifest = json.loads((reference_dir() / "manifests" / "vc0_depth.json").read_text())
    layout = {key[len(MIDAS_PREFIX):]: spec["shape"] for key, spec in manifest["keys"].items()
              if key.startswith(MIDAS_PREFIX)}
    assert len(layout) == manifest["separate_files"]["dpt_hybrid-midas.pt"]["num_keys"] == 368
    with torch.device("meta"):
        estimator = DepthEstimator(DepthConfig())
        mapped = estimator.official_keys({key: torch.empty(shape) for key, shape in layout.items()})
    ours = {name: tuple(value.shape) for name, value in estimator.state_dict().items()}
    assert {name: tuple(value.shape) for name, value in mapped.items()} == ours
    estimator.load_state_dict(mapped, strict=True)


@pytest.mark.parametrize("key", ["pretrained.model.blocks.12.norm1.weight", "scratch.extra.weight"])
def test_a_foreign_key_is_refused_by_name(key):
    estimator = tiny_estimator()
    tensors = load_file(reference_dir() / "tiny" / "vc0_depth" / "dpt_hybrid_tiny.safetensors")
    tensors[key] = torch.zeros(32)
    with pytest.raises(VcraftError, match=key.replace(".", r"\.")):
        estimator.official_keys(tensors)


def test_a_file_in_transformers_own_layout_loads_too():
    """The same weights as transformers names them (how `Intel/dpt-hybrid-midas` publishes MiDaS): taken as they are."""
    estimator = tiny_estimator()
    own = {name.removeprefix("model."): value for name, value in estimator.state_dict().items()}
    mapped = estimator.official_keys(own)
    assert mapped.keys() == estimator.state_dict().keys()
    assert all(torch.equal(value, mapped[name]) for name, value in estimator.state_dict().items())
