"""The `open_clip` text-encoder family: OpenCLIP's text tower (a causal pre-norm transformer), read at the
penultimate or last layer, with its tokenizer (tokenizer.py).

Only the text tower is built (the reference builds the whole CLIP, image tower included, then deletes it). The
modules are named as in open_clip's TextTransformer, so official checkpoints load key for key; written here
rather than imported because `import open_clip` costs seconds of start-up (see tokenizer.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vcraft.config import TextEncoderConfig
from vcraft.models.tokenizer import tokenize


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's arithmetic and parameter names (the fused `in_proj_weight`, `out_proj`), with
    `out_proj` called as a module: torch's own applies its weight by hand, which a wrapped layer would not see."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        if not self.in_proj_weight.is_meta:  # initialised as torch's, in the same order of random draws
            nn.init.xavier_uniform_(self.in_proj_weight)
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(), c_proj=nn.Linear(4 * width, width),
        ))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, heads: int, layers: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))


class TextTables(nn.Module):
    """CLIP's text side outside its transformer: the token and position tables and the final norm, and the
    projection and similarity scale, which official checkpoints carry and vcraft never uses (kept so that they load
    strictly). The image-to-video checkpoint keeps these beside its vision tower too."""

    def __init__(self, vocab_size: int, width: int, context_length: int, embed_dim: int):
        super().__init__()
        # Given an empty table, so as not to be drawn twice (see OpenCLIPTextEncoder._init_weights).
        self.token_embedding = nn.Embedding(vocab_size, width, _weight=torch.empty(vocab_size, width))
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))


class TextTower(TextTables):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__(cfg.vocab_size, cfg.width, cfg.context_length, cfg.embed_dim)
        self.transformer = Transformer(cfg.width, cfg.heads, cfg.layers)


class OpenCLIPTextEncoder(nn.Module):
    """The `open_clip` family: prompts to `[n, context_length, width]` token features (all positions, padding
    included), through open_clip's tokenizer and text tower."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        if cfg.layer not in ("penultimate", "last"):
            raise ValueError(f"text encoder layer must be 'penultimate' or 'last', not {cfg.layer!r}")
        self.cfg = cfg
        self.model = TextTower(cfg)
        # On the meta device there is nothing to fill (and normal_ there imports torch._dynamo: seconds).
        if not self.model.positional_embedding.is_meta:
            self._init_weights()

    def _init_weights(self) -> None:
        """CLIP's initialisation, for training from scratch (loading a checkpoint overwrites all of it)."""
        tower, width, layers = self.model, self.cfg.width, self.cfg.layers
        nn.init.normal_(tower.token_embedding.weight, std=0.02)
        nn.init.normal_(tower.positional_embedding, std=0.01)
        residual_std = width ** -0.5 * (2 * layers) ** -0.5
        for block in tower.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=residual_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=residual_std)
        nn.init.normal_(tower.text_projection, std=width ** -0.5)
        nn.init.constant_(tower.logit_scale, math.log(1 / 0.07))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tower = self.model
        n = tokens.shape[1]
        x = tower.token_embedding(tokens) + tower.positional_embedding[:n].to(tower.token_embedding.weight.dtype)
        # The causal mask is made here rather than stored, so the module has no non-persistent buffer and can
        # be built on the meta device and filled straight from a checkpoint.
        mask = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        blocks = tower.transformer.resblocks
        for block in blocks[:-1] if self.cfg.layer == "penultimate" else blocks:
            x = block(x, mask)
        return tower.ln_final(x)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids `[n, context_length]` as open_clip.tokenize gives them."""
        return tokenize(prompts, self.cfg.context_length)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(self.tokenize(prompts).to(self.model.token_embedding.weight.device))
