"""No pixel changes: videos whose frames were hashed before the generation path was restructured (issue 21,
with commit 169e98e, through `vcraft generate ... --format png`) must come out the same, to the last bit.

The three "prompt" videos were rendered then in one batch (`-f` with a row per prompt, all seed 0,
`--batch-size 3`): the same pixels now come from rendering each video on its own, and the first of them is
also the one rendered alone. tests/test_shapes_model.py reads the same videos (through `render`)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from reference import reference_dir

# name: (model, prompt, settings, frames' shape, sha256 of the uint8 frames [T, H, W, 3])
GOLDEN = {
    "40 frames": ("shapes", "a red circle moving left", {"seed": 0, "frames": 40}, (40, 64, 64, 3),
                  "bde0d995da5db9fe58584873b819d885739c757c1a135080a9948c0358fba058"),
    "prompt 1": ("shapes", "a red circle moving left", {"seed": 0}, (16, 64, 64, 3),
                 "fa96701c1177d94541783ea20802ece0ead2e860b3dba2f1b7ac2fcc9f077787"),
    "prompt 2": ("shapes", "The blue square moves up.", {"seed": 0}, (16, 64, 64, 3),
                 "7f7273286b968d899959b00df5589148fb62601f5a509b0ebe0671dd31224b9f"),
    "prompt 3": ("shapes", "a green triangle getting bigger", {"seed": 0}, (16, 64, 64, 3),
                 "37779cfb826889ae46511d10b2ccabbc0b011392f7f3e11e5d6b3d13b8ddc22c"),
    "negative": ("shapes", "a green square growing", {"seed": 6, "negative": "a green square shrinking"},
                 (16, 64, 64, 3), "4a2268f840925a2ab8f11d6e01a8ced895463f9e5fdb931d02d48fffe87e1071"),
    "eta": ("shapes", "a white circle moving right",
            {"seed": 7, "eta": 0.5, "guidance_min_t": 0, "frames": 8, "steps": 6}, (8, 64, 64, 3),
            "bb846f6f86ec435594d7a93e226a439d975e0495e7992284d22bd0546015a616"),
    "tiny": ("tiny", "a red fox running through snow",
             {"seed": 3, "frames": 8, "height": 64, "width": 128, "steps": 10, "guidance": 12.0, "eta": 0.0,
              "fps": 8}, (8, 64, 128, 3), "3775b02262ed8328d08f8d79fd0f8451b0ec374db42780672ecd89c36a8ff0e8"),
    "tiny long": ("tiny", "a red fox running through snow",
                  {"seed": 4, "frames": 24, "height": 64, "width": 128, "steps": 5, "guidance": 12.0, "eta": 1.0,
                   "fps": 8}, (24, 64, 128, 3), "27b8e2c65a0203650aa4360d57c5cc5eb047790f9fe5e887a4964c78efa987a4"),
}


@pytest.fixture(autouse=True)
def two_threads():
    """The hashes were recorded with torch's 2 CPU threads (a 2-core x86-64 machine with AVX-512); another
    thread count sums in another order and changes the last bits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_pipe():
    from vcraft import TextToVideo

    root = reference_dir() / "tiny" / "vc2_512"
    return TextToVideo.from_pretrained(str(root / "config.yaml"), root / "model.ckpt", device="cpu")


@pytest.mark.parametrize("case", GOLDEN)
def test_the_pixels_are_the_recorded_ones(request, render, case):
    model, prompt, settings, shape, digest = GOLDEN[case]
    make = request.getfixturevalue("tiny_pipe") if model == "tiny" else render
    video = make(prompt, **settings)
    assert video.shape == shape and video.dtype == np.uint8
    assert hashlib.sha256(np.ascontiguousarray(video).tobytes()).hexdigest() == digest
