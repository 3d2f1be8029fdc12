"""The seams later models plug into: every layer can be wrapped (a LoRA), a separate weight file attaches to its
component through the component table, and text encoders come by family."""

from __future__ import annotations

import pytest
import torch
from reference import reference_dir
from torch import nn

from vcraft.config import apply_overrides, load_config, load_preset
from vcraft.errors import VcraftError
from vcraft.loaders.components import COMPONENTS, route
from vcraft.loaders.loading import attach, build_models

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class LoRALike(nn.Module):
    """`base(x) + up(down(x))`, as a LoRA computes it: `down` has the base layer's kernel, stride and padding (so it
    reads the input in the same layout), `up` maps its rank back; `up` starts at zero."""

    def __init__(self, base: nn.Module, rank: int = 2):
        super().__init__()
        self.base, self.calls = base, 0
        if isinstance(base, nn.Linear):
            self.down, self.up = nn.Linear(base.in_features, rank, bias=False), nn.Linear(rank, base.out_features,
                                                                                         bias=False)
        else:
            conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(base.kernel_size)]
            self.down = conv(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
            self.up = conv(rank, base.out_channels, 1, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.base(x) + self.up(self.down(x))


def wrap_every_layer(module: nn.Module) -> dict[str, LoRALike]:
    """Replace every Linear and convolution below `module` by a LoRALike around it; the wrappers by path."""
    wrappers = {}
    for path, layer in list(module.named_modules()):
        if isinstance(layer, LAYERS) and ".base" not in f".{path}" and not path.endswith((".down", ".up")):
            parent, _, name = path.rpartition(".")
            wrapper = LoRALike(layer)
            setattr(module.get_submodule(parent), name, wrapper)
            wrappers[path] = wrapper
    return wrappers


def block_of(path: str) -> str:
    """A layer's block: its path up to the first index (`input_blocks.3`, `model.transformer.resblocks.1`)."""
    parts = path.split(".")
    index = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts) - 1)
    return ".".join(parts[:index + 1])


def _runs(models, generator: torch.Generator) -> dict[str, tuple[nn.Module, callable]]:
    """Each component with a forward pass over random inputs (the autoencoder's encoding and decoding both)."""
    cfg_unet = models.unet.cfg
    x = torch.randn(1, cfg_unet.in_channels, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77 + (4 if models.image_projector is not None else 0), cfg_unet.context_dim,
                          generator=generator)
    latents = torch.randn(1, models.autoencoder.decoder.conv_in.in_channels, 2, 4, 4, generator=generator)
    frames = torch.rand(1, 3, 2, 16, 16, generator=generator) * 2 - 1
    runs = {
        "unet": lambda: models.unet(x, torch.tensor([500]), context, torch.tensor([8])),
        "text_encoder": lambda: models.text_encoder.encode(["a fox in the snow"]),
        "autoencoder": lambda: torch.cat([models.autoencoder.decode(latents).flatten(),
                                          models.autoencoder.encode(frames).flatten()]),
    }
    if models.image_encoder is not None:
        picture = torch.rand(1, 3, 32, 48, generator=generator) * 2 - 1
        runs["image_encoder"] = lambda: models.image_encoder(picture)
        runs["image_projector"] = lambda: models.image_projector(models.image_encoder(picture))
    if models.adapter is not None:
        side = 8 * models.adapter.downscale  # the pixels of an 8x8 latent
        maps = torch.rand(1, 1, 2, side, side, generator=generator) * 2 - 1
        runs["adapter"] = lambda: torch.cat([f.flatten() for f in models.adapter(maps)])
    return runs


def model_config(which: str):
    """The embedded model's, or a tiny fixture's (skipped with a message where the fixtures are absent)."""
    if which == "shapes":
        return load_preset("shapes").model
    return load_config(reference_dir() / "tiny" / which / "config.yaml").model


# No vc0_base case: vc0_depth's config is vc0_base's plus the adapter and the depth estimator (its UNet, autoencoder
# and text tower are built from the same settings, layer for layer; the weights are random in both), so vc0_depth's
# case runs every check vc0_base's would, and the adapter's besides.
@pytest.mark.parametrize("which", ["shapes", "vc2_512", "vc1_i2v_512",
                                   pytest.param("vc0_depth", marks=pytest.mark.slow)])
@torch.inference_mode()
def test_every_layer_can_be_wrapped_a_zero_update_changes_nothing_and_any_other_changes_every_block(which):
    """shapes: Linear projections, temporal convolutions, a frame-conditioned UNet; vc2_512: also the 1x1
    Conv1d projections of `init_attn` and relative positions; vc1_i2v_512: the image encoder and projector;
    vc0_depth: the first release's 5-D UNet and transformers' CLIP text tower (vc0_base's), and with shapes, the
    control adapter."""
    cfg = model_config(which)
    torch.manual_seed(0)
    models = build_models(cfg, "cpu", encoder=True)
    for module in models.modules():
        module.eval()
        for p in module.parameters():  # random weights everywhere, so that no zero-initialised layer hides another
            p.normal_(0, 0.2 / max(1, p[0].numel()) ** 0.5) if p.ndim > 1 else p.normal_(0, 0.05)
    runs = _runs(models, torch.Generator().manual_seed(1))
    before = {name: run() for name, run in runs.items()}
    for name, module in models.items():
        if name == "depth_estimator":  # transformers' DPT, whose BiT convolutions pad inside their own forward
            continue  # (a wrapper's copy of the kernel would not see the padding); no LoRA targets it
        wrappers = wrap_every_layer(module)
        assert wrappers, name
        assert torch.equal(runs[name](), before[name]), f"{name}: a zero update changed the output"
        # Every wrapped layer ran, but the text tower's last block where the model reads the penultimate layer.
        unused = {p for p, w in wrappers.items() if w.calls == 0}
        if name == "text_encoder" and cfg.text_encoder.layer == "penultimate":
            last = f"model.transformer.resblocks.{cfg.text_encoder.layers - 1}."
            assert unused == {p for p in wrappers if p.startswith(last)}
        else:
            assert not unused, f"{name}: wrapped layers that its forward skipped: {sorted(unused)[:5]}"
        for block in sorted({block_of(p) for p in wrappers} - {block_of(p) for p in unused}):
            inside = [w for p, w in wrappers.items() if block_of(p) == block]
            for w in inside:
                nn.init.normal_(w.up.weight, std=0.5)
            assert not torch.equal(runs[name](), before[name]), f"{name}: an update in {block} changed nothing"
            for w in inside:
                nn.init.zeros_(w.up.weight)


def test_every_official_prefix_routes_to_one_component():
    assert route("model.diffusion_model.out.2.weight")[0].name == "unet"
    assert route("cond_stage_model.model.token_embedding.weight") == (
        next(c for c in COMPONENTS if c.name == "text_encoder"), "model.token_embedding.weight")
    assert route("image_proj_model.latents")[0].name == "image_projector"
    assert route("alphas_cumprod") is None
    prefixes = [c.prefix for c in COMPONENTS]
    assert not any(a != b and a.startswith(b) for a in prefixes for b in prefixes), prefixes


def test_a_separate_file_attaches_to_its_component_strictly():
    cfg = load_preset("shapes").model
    torch.manual_seed(0)
    made = build_models(cfg, "cpu")
    weights = {f"model.diffusion_model.{k}": v.clone() for k, v in made.unet.state_dict().items()}
    torch.manual_seed(1)
    models = build_models(cfg, "cpu")
    assert not torch.equal(models.unet.out[-1].weight, made.unet.out[-1].weight)
    attach(models, cfg, "unet", weights, "unet.safetensors")  # with the official prefix ...
    assert all(torch.equal(v, made.unet.state_dict()[k]) for k, v in models.unet.state_dict().items())
    attach(models, cfg, "unet", {k.removeprefix("model.diffusion_model."): v for k, v in weights.items()}, "u")
    with pytest.raises(VcraftError, match=r"unet.safetensors does not fit the UNet .*1 unexpected \(e.g. extra\)"):
        attach(models, cfg, "unet", {**weights, "extra": torch.zeros(1)}, "unet.safetensors")
    with pytest.raises(VcraftError, match="which this model lacks"):
        attach(models, cfg, "image_encoder", {}, "clip.safetensors")


def test_the_text_encoder_family_is_chosen_by_the_config():
    cfg = load_preset("shapes")
    assert cfg.model.text_encoder.family == "open_clip"
    with pytest.raises(VcraftError, match="model.text_encoder.family must be one of open_clip, clip, not 'bert'"):
        apply_overrides(cfg, ["model.text_encoder.family=bert"])
