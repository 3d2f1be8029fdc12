"""Continue the shipped embedded model with more diffusion phases (for instance on clips that turn, `turn_prob`),
without the run folder it was trained in: builds a folder `vcraft train` resumes from step 5,400 (the data set
encoded by the shipped autoencoder; a diffusion checkpoint whose weights and EMA are the shipped weights, with a
fresh optimiser), then runs the recipe with the phases added. Each phase keeps the settings of phase 3 and changes
`turn_prob` and the peak learning rate (its cosine ends at its `until`, as every phase's does).

    python scripts/research/continue_shipped.py runs/turn-a --phase 6400 0.3 3e-3
    python scripts/research/continue_shipped.py runs/turn-b --phase 6400 0.3 3e-3 --phase 8400 0.5 2.2e-3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vcraft.config import apply_overrides, load_preset
from vcraft.loaders.checkpoints import save_state_dict
from vcraft.loaders.weights import locate
from vcraft.train import encode_dataset, initial_models, make_dataset, train
from vcraft.train.loop import optimiser, save_state
from vcraft.train.recipe import VAE
from vcraft.train.stages import TRAINED, frozen_model


def start_from_shipped(cfg, run: Path) -> None:
    shipped_cfg = load_preset("shapes")
    ckpt = locate(shipped_cfg).path
    shipped = frozen_model(shipped_cfg, ckpt, torch.device("cpu"))
    videos, _, _ = make_dataset(cfg)
    raw = encode_dataset(shipped.autoencoder, videos)
    autoencoder = {VAE + k: v for k, v in shipped.autoencoder.state_dict().items()}
    save_state_dict({"latents": raw, **autoencoder}, run / "latents.safetensors")
    models = initial_models(cfg)
    nets = torch.nn.ModuleDict({net: getattr(models, name) for net, name in TRAINED.items()})
    for name in TRAINED.values():
        getattr(models, name).load_state_dict(getattr(shipped, name).state_dict())
    models.text_encoder.requires_grad_(False)
    opt = optimiser([p for p in nets.parameters() if p.requires_grad], 1e-3, 0.01)
    weights = {k: v.detach().clone() for k, v in nets.state_dict().items()}
    save_state({"model": weights, "ema": weights, "optimiser": opt.state_dict(), "rng": torch.get_rng_state(),
                "step": 5400}, run / "diffusion.pt")
    print(f"started {run} from {ckpt}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--phase", nargs=3, action="append", required=True, metavar=("UNTIL", "TURN_PROB", "LR"))
    parser.add_argument("--turns", type=int, default=2000, help="clips that turn (train.turns)")
    args = parser.parse_args()
    base = load_preset("shapes")
    phases = list(base.train.diffusion.phases)
    for until, turn_prob, lr in args.phase:
        phases.append({**phases[-1], "until": int(until), "turn_prob": float(turn_prob), "lr": float(lr)})
    cfg = apply_overrides(base, [f"train.turns={args.turns}", f"train.diffusion.steps={phases[-1]['until']}",
                                 "train.diffusion.phases=" + json.dumps(phases)])
    args.run.mkdir(parents=True, exist_ok=True)
    if not (args.run / "diffusion.pt").is_file():
        start_from_shipped(cfg, args.run)
    print(train(cfg, args.run), flush=True)


if __name__ == "__main__":
    main()
