"""The `clip` text-encoder family: CLIP ViT-L/14's text tower as transformers' CLIPTextModel, as VideoCrafter's first
release reads it (every position of the last layer, after the final LayerNorm; no attention mask but the causal
one). Its tokenizer is vcraft's CLIP BPE (tokenizer.py, open_clip's vocabulary), padded with the end token as
transformers' CLIPTokenizer pads; the two differ only on prompts that contain the special tokens' own text.
"""

from __future__ import annotations

import torch
from torch import nn

from vcraft.config import TextEncoderConfig
from vcraft.models.tokenizer import tokenizer

TEXT_MODEL = "transformer.text_model."  # the official keys' level that transformers 5 no longer has


class CLIPTextEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        self.cfg = cfg
        # ViT-L/14's settings; only the sizes come from the config (the pooled output's token ids are unused).
        self.transformer = CLIPTextModel(CLIPTextConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.width, intermediate_size=4 * cfg.width,
            num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, max_position_embeddings=cfg.context_length,
            projection_dim=cfg.embed_dim, hidden_act="quick_gelu", layer_norm_eps=1e-5,
            pad_token_id=1, bos_token_id=0, eos_token_id=2))
        # Its position ids are a buffer no checkpoint holds: made here, on the CPU, even when built on the meta
        # device for loading (which fills only what checkpoints hold).
        for module in self.transformer.modules():
            if isinstance(getattr(module, "position_ids", None), torch.Tensor) and module.position_ids.is_meta:
                ids = torch.arange(cfg.context_length, device="cpu").expand(1, -1)
                module.register_buffer("position_ids", ids, persistent=False)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids `[n, context_length]`: start, the prompt's tokens, end, then the end token again."""
        bpe = tokenizer()
        return bpe(prompts, self.cfg.context_length, pad=bpe.end)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(input_ids=tokens).last_hidden_state

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(self.tokenize(prompts).to(self.transformer.device))

    def official_keys(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The official names (transformers 4's, with `text_model.`) as this transformers version names them; the
        `position_ids` buffer that transformers 4.25 saved, and newer versions do not keep, left out."""
        ours = set(self.state_dict())
        renamed = {}
        for key, value in tensors.items():
            if key.endswith("embeddings.position_ids"):
                continue
            if key not in ours and key.startswith(TEXT_MODEL):
                key = "transformer." + key[len(TEXT_MODEL):]
            renamed[key] = value
        return renamed
