"""CLIP's byte-level BPE tokenizer as open_clip applies it: its vocabulary file, text cleaning and special tokens.

Written here rather than imported because `import open_clip` pulls in torchvision and torch._dynamo, seconds
of start-up that every `vcraft generate` would pay; tests check it against open_clip's own tokenizer.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch

START, END = "<start_of_text>", "<end_of_text>"
MERGES = 49152 - 256 - 2  # merge rules kept: 512 byte symbols + merges + 2 special tokens = 49408 ids
WORDS = regex.compile(
    rf"{START}|{END}|'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE
)


def vocabulary_file() -> Path:
    """open_clip's copy of CLIP's merge list, found without importing the package."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip_torch is not installed; it provides the CLIP vocabulary")
    return Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"


def _byte_symbols() -> dict[int, str]:
    """A visible character for every byte, in CLIP's id order: printable Latin-1 bytes stand for themselves
    (first), the other bytes for characters from 256 on, so that no symbol is whitespace or a control code."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    hidden = [b for b in range(256) if b not in visible]
    return {**{b: chr(b) for b in visible}, **{b: chr(256 + n) for n, b in enumerate(hidden)}}


def clean(text: str) -> str:
    """Repair mojibake, unescape HTML twice, collapse whitespace, lower-case: open_clip's 'lower' cleaning."""
    return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()


class Tokenizer:
    def __init__(self, path: Path):
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")[1:MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        self.bytes = _byte_symbols()
        base = list(self.bytes.values())
        vocab = [*base, *(s + "</w>" for s in base), *("".join(m) for m in merges), START, END]
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.start, self.end = self.ids[START], self.ids[END]
        self._words: dict[str, list[int]] = {}

    def _merge(self, word: str) -> list[str]:
        """Apply merge rules, lowest rank first, each to every non-overlapping occurrence left to right."""
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            rank, pair = min((self.ranks.get(p, math.inf), p) for p in zip(parts, parts[1:]))
            if rank == math.inf:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _word_ids(self, word: str) -> list[int]:
        if word not in self._words:
            symbols = "".join(self.bytes[b] for b in word.encode("utf-8"))
            parts = [symbols] if symbols in (START, END) else self._merge(symbols)
            self._words[word] = [self.ids[p] for p in parts]
        return self._words[word]

    def encode(self, text: str) -> list[int]:
        return [i for word in WORDS.findall(clean(text)) for i in self._word_ids(word)]

    def __call__(self, prompts: list[str], context_length: int = 77, pad: int = 0) -> torch.Tensor:
        """`[n, context_length]` int64: start token, the prompt's tokens, end token, then `pad` (open_clip: 0); a
        prompt too long is cut and still ends with the end token."""
        out = torch.full((len(prompts), context_length), pad, dtype=torch.long)
        for row, prompt in zip(out, prompts):
            ids = [self.start, *self.encode(prompt), self.end]
            if len(ids) > context_length:
                ids = [*ids[:context_length - 1], self.end]
            row[:len(ids)] = torch.tensor(ids)
        return out


@lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    return Tokenizer(vocabulary_file())


def tokenize(prompts: list[str], context_length: int = 77) -> torch.Tensor:
    """Token ids of `prompts` as open_clip.tokenize gives them."""
    return tokenizer()(prompts, context_length)
