"""No pixel changes: videos whose frames were hashed before the generation path was restructured (issue 21,
at commit 169e98e, through `vcraft generate ... --format png`) must come out the same, to the last bit.

"three" was rendered then with --batch-size 3 (seeds 3, 4, 5 in one batch): the same pixels now come from
rendering each video on its own."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from reference import reference_dir

# name: (model, prompt, settings, frames' shape, sha256 of the uint8 frames [T, H, W, 3])
GOLDEN = {
    "16 frames": ("shapes", "a red circle moving left", {"seed": 1}, (16, 64, 64, 3),
                  "59f554d6a9551d4d17185219a8a14571d8f30198d2666a689148148cff451532"),
    "40 frames": ("shapes", "a blue triangle moving down", {"seed": 2, "frames": 40}, (40, 64, 64, 3),
                  "c91613c073adb79e15be46d73c9c1fc873a248c78ef0462de6894b0b8b1464e7"),
    "three 0": ("shapes", "a red circle moving left", {"seed": 3}, (16, 64, 64, 3),
                "dba42f1ce316aab2d6b71911c249b712aed67626d5e07ccb3133aab614629d28"),
    "three 1": ("shapes", "a cyan triangle moving up", {"seed": 4}, (16, 64, 64, 3),
                "d01d3e056017fc666a60743ea560894e6397c93c9eb67104f7d85f515517ec6b"),
    "three 2": ("shapes", "a purple square shrinking", {"seed": 5}, (16, 64, 64, 3),
                "ed40aa81a7f0574102799ba480b5d5ce9f25e1e836562396d535eca2f5e6a4c5"),
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
PIPES: dict = {}


def pipe_for(model: str):
    from vcraft import TextToVideo

    if model not in PIPES:
        if model == "tiny":
            root = reference_dir() / "tiny" / "vc2_512"
            PIPES[model] = TextToVideo.from_pretrained(str(root / "config.yaml"), root / "model.ckpt", device="cpu")
        else:
            PIPES[model] = TextToVideo.from_pretrained(model, device="cpu")
    return PIPES[model]


@pytest.mark.parametrize("case", GOLDEN)
def test_the_pixels_are_the_recorded_ones(case):
    model, prompt, settings, shape, digest = GOLDEN[case]
    video = pipe_for(model)(prompt, **settings)
    assert video.shape == shape and video.dtype == np.uint8
    assert hashlib.sha256(np.ascontiguousarray(video).tobytes()).hexdigest() == digest
