"""Locate ../shared/reference (or $VCRAFT_REFERENCE) for the tests that compare against the original."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

VARIANTS = ["vc1_512", "vc1_1024", "vc2_512"]
PRESET_OF = {"vc1_512": "vc1-512", "vc1_1024": "vc1-1024", "vc2_512": "vc2-512"}


def reference_dir() -> Path:
    """The fixture folder; skips the calling test when it is absent (a user's fresh clone), unless
    VCRAFT_REQUIRE_REFERENCE=1 (CI), where absence is a failure."""
    default = Path(__file__).resolve().parents[2] / "shared" / "reference"
    path = Path(os.environ.get("VCRAFT_REFERENCE", default))
    if not (path / "README.md").is_file():
        message = f"reference fixtures not found at {path} (set VCRAFT_REFERENCE to their folder)"
        if os.environ.get("VCRAFT_REQUIRE_REFERENCE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def rel_l2(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def assert_close(ours, ref, rel: float, max_abs_factor: float, floor: float = 0.0, what: str = "") -> None:
    """The README's check: relative L2 and max-abs difference relative to the reference's largest value."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    r = rel_l2(ours, ref)
    limit = max(max_abs_factor * float(ref.abs().max()), floor)
    m = float((ours.double() - ref.double()).abs().max())
    assert r <= rel and m <= limit, f"{what}: rel L2 {r:.3g} (<= {rel}), max abs {m:.3g} (<= {limit:.3g})"
