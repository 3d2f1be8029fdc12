"""vcraft: text-to-video from the command line, compatible with the VideoCrafter checkpoints.

`import vcraft` stays cheap: torch and the models load on first use of the names below.
"""

from __future__ import annotations

__version__ = "0.1.0"
DEFAULT_PRESET = "shapes"  # the embedded model, which needs no download
__all__ = ["TextToVideo", "Settings", "load_config", "load_preset", "VcraftError"]


def __getattr__(name: str):
    if name == "TextToVideo":
        from vcraft.pipeline.api import TextToVideo

        return TextToVideo
    if name == "Settings":
        from vcraft.pipeline.settings import Settings

        return Settings
    if name in ("load_config", "load_preset"):
        from vcraft import config

        return getattr(config, name)
    if name == "VcraftError":
        from vcraft.errors import VcraftError

        return VcraftError
    raise AttributeError(f"module 'vcraft' has no attribute {name!r}")
