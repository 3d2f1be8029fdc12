"""Merging a LoRA into a full-size model, and removing it: time and the memory it keeps, with random weights.

    python scripts/bench_lora.py [--model vc0-256] [--rank 4] [--dtype fp32]

The LoRA covers the release's default targets (every spatial attention's to_q, to_k, to_v and the feed-forward's
first projection in the UNet; q_proj, k_proj, v_proj and out_proj in the text tower), as its VideoLoRA files do.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vcraft.config import load_preset
from vcraft.loaders.checkpoints import DTYPES
from vcraft.loaders.components import BY_NAME
from vcraft.loaders.loading import build_models, ready_for_inference
from vcraft.loaders.lora import Merged, read_lora

UNET_TARGETS = (".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn2.to_q", ".attn2.to_k", ".attn2.to_v",
                ".ff.net.0.proj")
TEXT_TARGETS = (".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.out_proj")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vc0-256")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    args = parser.parse_args()
    cfg = load_preset(args.model).model
    torch.manual_seed(0)
    started = time.perf_counter()
    models = ready_for_inference(build_models(cfg, "cpu"), torch.device("cpu"))
    for module in models.modules():
        module.to(DTYPES[args.dtype])
    print(f"built {args.model} with random weights in {time.perf_counter() - started:.1f} s")
    pairs = {}
    for name, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS)):
        prefix = BY_NAME[name].prefix + ("transformer.text_model." if name == "text_encoder" else "")
        for path, layer in getattr(models, name).named_modules():
            if path.endswith(targets) and isinstance(layer, torch.nn.Linear):
                path = path.removeprefix("transformer.") if name == "text_encoder" else path
                pairs[f"{prefix}{path}.lora_up.weight"] = torch.randn(layer.out_features, args.rank) * 0.01
                pairs[f"{prefix}{path}.lora_down.weight"] = torch.randn(args.rank, layer.in_features) * 0.01
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lora.safetensors"
        from safetensors.torch import save_file

        save_file(pairs, str(path))
        started = time.perf_counter()
        lora = read_lora(path)
        read = time.perf_counter() - started
    merged = Merged(models, cfg)
    started = time.perf_counter()
    merged.add(lora, 0.8, keep=False)
    for_good = time.perf_counter() - started
    merged = Merged(models, cfg)
    started = time.perf_counter()
    merged.add(lora, 0.8)
    merge = time.perf_counter() - started
    kept = merged.kept_bytes()
    started = time.perf_counter()
    merged.clear()
    clear = time.perf_counter() - started
    print(f"| {args.model} {args.dtype}, rank {args.rank}, {len(pairs) // 2} layers | read {read:.2f} s | merge for "
          f"good (the command line) {for_good:.2f} s | merge, removable (Python, web app) {merge:.2f} s, keeping "
          f"{kept / 2**20:.0f} MiB | remove {clear:.2f} s | threads {torch.get_num_threads()} |")


if __name__ == "__main__":
    main()
