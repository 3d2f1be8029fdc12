"""Training a small model from scratch on the synthetic shapes data: autoencoder stage, then diffusion.

Everything lives in one run folder, and every stage can be stopped and resumed at any checkpoint:

    run/config.yaml                 the config, with the latent scale measured after the autoencoder stage
    run/autoencoder.pt              autoencoder stage: weights, optimiser, RNG state, step (while training)
    run/latents.safetensors         the whole data set encoded once, with the trained autoencoder
    run/diffusion.pt                diffusion stage: UNet, text encoder, their EMA, optimiser, RNG, step
    run/train.log                   one line per logged step: stage, step, loss, learning rate, speed
    run/model.safetensors           the result, EMA weights, loadable with --config run/config.yaml

All randomness comes from torch's global generator, seeded per stage and saved in every checkpoint,
so a resumed run continues bit for bit where it stopped, in the diffusion phase it stopped in.

    data.py     the clips, their reversed copies, pixels, latents
    loop.py     the step loop: learning-rate schedule, optimiser, checkpoints, resuming, the log
    stages.py   autoencoder, text encoder and diffusion stages, the diffusion loss and phases
    recipe.py   the stages in order in a run folder, and the export
"""

from vcraft.train.data import encode_dataset, make_dataset, reversed_clips, to_pixels
from vcraft.train.loop import lr_at
from vcraft.train.recipe import checkpoint_of_run, export, initial_models, train
from vcraft.train.stages import (
                                 diffusion_loss,
                                 diffusion_lr,
                                 draw_timesteps,
                                 phase_of,
                                 pretrain_text_encoder,
                                 train_autoencoder,
                                 train_diffusion,
)

__all__ = ["checkpoint_of_run", "diffusion_loss", "diffusion_lr", "draw_timesteps", "encode_dataset", "export",
           "initial_models", "lr_at", "make_dataset", "phase_of", "pretrain_text_encoder", "reversed_clips",
           "to_pixels", "train", "train_autoencoder", "train_diffusion"]
