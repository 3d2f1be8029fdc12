"""OpenCLIP text tower: the open_clip tokenizer and TextTransformer, read at the penultimate layer.

Only the text tower is built (the reference builds the whole CLIP, image tower included, then deletes it).
"""

from __future__ import annotations

import torch
from torch import nn

from vcraft.config import TextEncoderConfig


def tokenize(prompts: list[str], context_length: int = 77) -> torch.Tensor:
    """open_clip's BPE tokenizer: lower-cased, cleaned, start/end tokens, zero padding, cut to context."""
    from open_clip.tokenizer import tokenize as clip_tokenize

    return clip_tokenize(prompts, context_length=context_length)


class TextEncoder(nn.Module):
    """Maps prompts to `[n, context_length, width]` token features (all positions, padding included)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        from open_clip.transformer import TextTransformer

        if cfg.layer not in ("penultimate", "last"):
            raise ValueError(f"text encoder layer must be 'penultimate' or 'last', not {cfg.layer!r}")
        self.cfg = cfg
        # The causal mask is made in forward rather than stored, so the module has no non-persistent
        # buffer and can be built on the meta device and filled straight from a checkpoint.
        self.model = TextTransformer(
            context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.width, heads=cfg.heads,
            layers=cfg.layers, output_dim=cfg.embed_dim, act_layer=nn.GELU, no_causal_mask=True,
        )
        # Kept only so that official checkpoints load strictly; CLIP's similarity scale is never used here.
        self.model.logit_scale = nn.Parameter(torch.empty(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tower = self.model
        n = tokens.shape[1]
        x = tower.token_embedding(tokens) + tower.positional_embedding[:n].to(tower.token_embedding.weight.dtype)
        mask = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        blocks = tower.transformer.resblocks
        for block in blocks[:-1] if self.cfg.layer == "penultimate" else blocks:
            x = block(x, attn_mask=mask)
        return tower.ln_final(x)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        device = self.model.token_embedding.weight.device
        return self(tokenize(prompts, self.cfg.context_length).to(device))
