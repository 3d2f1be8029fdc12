"""Compare vcraft's antialiased shrink to 224x224 (models/image_encoder.py: shrink_blur, then bicubic) with kornia's
`resize(..., antialias=True)`, which the original image-to-video preprocessing calls. kornia is not a vcraft
dependency: run this where it is installed (`pip install kornia==0.9.0`, the fixtures' version).

    python scripts/check_antialias.py
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F

from vcraft.models.image_encoder import shrink_blur

SIZES = [(320, 512), (576, 1024), (64, 128), (300, 200), (224, 500)]


def main() -> None:
    print(f"kornia {kornia.__version__}, torch {torch.__version__}")
    for size in SIZES:
        x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        theirs = kornia.geometry.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
        ours = F.interpolate(shrink_blur(x, (224, 224)), (224, 224), mode="bicubic", align_corners=True)
        rel = float((ours - theirs).norm() / theirs.norm())
        print(f"{size[0]}x{size[1]}: relative L2 {rel:.2e}, largest difference {float((ours - theirs).abs().max()):.2e}")


if __name__ == "__main__":
    main()
