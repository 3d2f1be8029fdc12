"""Train the shapes preset's diffusion phases after step 5,400 from the embedded model's weights at that step, without
the run folder they were trained in: builds a folder `vcraft train` resumes from step 5,400 (the data set encoded by
the given checkpoint's autoencoder; a diffusion checkpoint whose weights and EMA are the given weights, with a fresh
optimiser), then runs the recipe. The weights shipped before phases 4-5 are the ones to start from; the shipped
weights were made so (docs/embedded-model.md):

    git show 9ccfc81:checkpoints/shapes/model.safetensors > runs/phase3.safetensors
    python scripts/research/continue_shipped.py runs/turns --from runs/phase3.safetensors

`--phase UNTIL TURN_PROB LR` (repeated) replaces the preset's phases after step 5,400: each keeps the settings of
the phase before it and changes `turn_prob` and the peak learning rate (its cosine ends at its `until`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vcraft.config import apply_overrides, load_preset
from vcraft.loaders.checkpoints import save_state_dict
from vcraft.train import encode_dataset, initial_models, make_dataset, train
from vcraft.train.loop import optimiser, save_state
from vcraft.train.recipe import VAE
from vcraft.train.stages import TRAINED, frozen_model

START = 5400


def start_from(cfg, ckpt: Path, run: Path) -> None:
    given = frozen_model(cfg, ckpt, torch.device("cpu"))
    videos, _, _ = make_dataset(cfg)
    raw = encode_dataset(given.autoencoder, videos)
    autoencoder = {VAE + k: v for k, v in given.autoencoder.state_dict().items()}
    save_state_dict({"latents": raw, **autoencoder}, run / "latents.safetensors")
    models = initial_models(cfg)
    nets = torch.nn.ModuleDict({net: getattr(models, name) for net, name in TRAINED.items()})
    for name in TRAINED.values():
        getattr(models, name).load_state_dict(getattr(given, name).state_dict())
    models.text_encoder.requires_grad_(False)
    opt = optimiser([p for p in nets.parameters() if p.requires_grad], 1e-3, 0.01)
    weights = {k: v.detach().clone() for k, v in nets.state_dict().items()}
    save_state({"model": weights, "ema": weights, "optimiser": opt.state_dict(), "rng": torch.get_rng_state(),
                "step": START}, run / "diffusion.pt")
    print(f"started {run} from {ckpt} at step {START}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--from", dest="ckpt", type=Path, required=True, help="the model's weights at step 5,400")
    parser.add_argument("--phase", nargs=3, action="append", metavar=("UNTIL", "TURN_PROB", "LR"))
    args = parser.parse_args()
    cfg = load_preset("shapes")
    if args.phase:
        phases = [p for p in cfg.train.diffusion.phases if p["until"] <= START]
        for until, turn_prob, lr in args.phase:
            phases.append({**phases[-1], "until": int(until), "turn_prob": float(turn_prob), "lr": float(lr)})
        cfg = apply_overrides(cfg, [f"train.diffusion.steps={phases[-1]['until']}",
                                    "train.diffusion.phases=" + json.dumps(phases)])
    args.run.mkdir(parents=True, exist_ok=True)
    if not (args.run / "diffusion.pt").is_file():
        start_from(cfg, args.ckpt, args.run)
    print(train(cfg, args.run), flush=True)


if __name__ == "__main__":
    main()
