"""vcraft's CLIP tokenizer against open_clip's (the fixtures' text case covers only four prompts)."""

import pytest
import torch

from vcraft.models.tokenizer import tokenize

PROMPTS = [
    "",
    "a corgi surfing a wave",
    "A Red CIRCLE moving   left\n\tfast",
    "Ünïcödé prompt – ok? naïve café, Straße",
    "mojibake: cafÃ© and â€œquotesâ€\x9d",
    "&amp;lt;b&amp;gt; &quot;escaped&quot; &#39;twice&#39;",
    "she's, they're, I'd, we'll, you've, I'm, isn't",
    "3 cats, 1024x576 pixels, 24fps, 2.5x zoom, ½ speed, Ⅻ o'clock",
    "emoji 🐕🌊 and CJK 一只狗在冲浪 and Arabic كلب and Hindi कुत्ता",
    "punctuation!!! ... ?! (brackets) [more] {braces} --- ___ @#$%^&*",
    "<start_of_text> special tokens typed by hand <END_OF_TEXT>",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    "x",
    " ".join(["a slow cinematic drone shot over misty mountains at sunrise"] * 12),  # cut at 77
]


@pytest.mark.parametrize("context_length", [77, 16])
def test_same_ids_as_open_clip(context_length):
    from open_clip import tokenize as open_clip_tokenize

    ours = tokenize(PROMPTS, context_length)
    theirs = open_clip_tokenize(PROMPTS, context_length=context_length)
    assert ours.dtype == torch.long and ours.shape == (len(PROMPTS), context_length)
    for prompt, a, b in zip(PROMPTS, ours, theirs):
        assert torch.equal(a, b), prompt

