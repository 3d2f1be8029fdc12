import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def shapes_pipe():
    """The embedded model, loaded once for the whole run."""
    from vcraft import TextToVideo

    return TextToVideo.from_pretrained("shapes", device="cpu")


@pytest.fixture(scope="session")
def render(shapes_pipe):
    """`render(prompt, **settings)`: the embedded model's video as uint8 `[T, H, W, 3]`, made once per run for
    the same prompt and settings, so that tests reading the same video share it."""
    made = {}

    def video(prompt: str, **settings):
        key = (prompt, tuple(sorted(settings.items())))
        if key not in made:
            made[key] = shapes_pipe(prompt, **settings)
            made[key].flags.writeable = False
        return made[key]

    return video
