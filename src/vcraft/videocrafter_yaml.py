"""The reader of original VideoCrafter inference YAMLs (configs/inference_t2v_*.yaml and inference_i2v_512_v1.0.yaml
of the original repository, and models/base_t2v/model_config.yaml of its first release): their model section
becomes a vcraft config, unchanged in meaning, or a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vcraft.errors import VcraftError

# Switches that change the computation but that no official text-to-video model uses; refusing them
# beats silently computing something else.
_UNSUPPORTED_UNET = {
    "use_scale_shift_norm": False, "resblock_updown": False, "tempspatial_aware": False,
    "temporal_selfatt_only": True, "conv_resample": True, "dims": 2,
}
# The Resampler's sizes are fixed in the original's code, not in its YAML (vcraft name: original name).
_RESAMPLER = {"resampler_width": "dim", "resampler_depth": "depth", "resampler_heads": "heads",
              "resampler_head_dim": "dim_head", "tokens": "num_queries", "resampler_ff_mult": "ff_mult"}
_IGNORED_UNET = {"use_checkpoint", "use_fp16", "num_heads", "num_classes"}


# The first release's UNet (lvdm.models.modules.openaimodel3d): switches whose other values it never shipped.
_RELEASE_UNET = {"kernel_size_t": 1, "padding_t": 0, "use_relative_position": True, "transformer_depth": 1,
                 "legacy": False, "use_scale_shift_norm": False, "resblock_updown": False}
_RELEASE_UNET_SIZES = ("in_channels", "out_channels", "model_channels", "attention_resolutions", "num_res_blocks",
                       "channel_mult", "num_heads", "context_dim", "temporal_length")
# CLIP ViT-L/14's text tower (transformers' CLIPTextConfig names), which the first release loads by name.
_VIT_L_14_TEXT = {"hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12,
                  "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768}


def from_videocrafter(data: DictConfig, path: Path) -> dict:
    try:
        params = OmegaConf.to_container(data.model.params, resolve=True)
        unet_target = params["unet_config"].get("target", "")
        unet_in = dict(params["unet_config"]["params"])
        vae_in = dict(params["first_stage_config"]["params"])
        text_in = dict(params["cond_stage_config"].get("params") or {})
    except (KeyError, TypeError, AttributeError, OmegaConfBaseException) as exc:
        raise VcraftError(f"{path} looks like a VideoCrafter config but lacks {exc}") from None
    if unet_target.startswith("lvdm.models.modules."):  # the first release (April 2023)
        return _first_release(params, unet_in, vae_in, path)

    for key, expected in _UNSUPPORTED_UNET.items():
        if key in unet_in and unet_in.pop(key) != expected:
            raise VcraftError(f"{path}: unet setting {key} other than {expected} is not supported")
    unet = {k: v for k, v in unet_in.items() if k not in _IGNORED_UNET}
    unet["image_attention"] = unet.pop("use_image_attention", False)
    if params.get("parameterization", "eps") != "eps":
        raise VcraftError(f"{path}: only epsilon-prediction models are supported")
    if params.get("uncond_type", "empty_seq") != "empty_seq":
        raise VcraftError(f"{path}: only uncond_type empty_seq is supported")

    autoencoder = _autoencoder(vae_in, path)
    text = _text_dims(_open_clip_config(text_in.get("arch", "ViT-H-14"), path))
    text["layer"] = text_in.get("layer", "penultimate")
    image = None
    if unet["image_attention"]:
        image_in = dict((params.get("cond_img_config") or {}).get("params") or {})
        image = _image_dims(_open_clip_config(image_in.get("arch", "ViT-H-14"), path), path, unet)

    return {
        "name": path.stem,
        "model": {"unet": unet, "autoencoder": autoencoder, "text_encoder": text, "image_encoder": image,
                  "schedule": _schedule(params), "scale_factor": params.get("scale_factor", 0.18215)},
        "sampling": _size(params, autoencoder, [40, 64]),
    }


def _first_release(params: dict, unet_in: dict, vae_in: dict, path: Path) -> dict:
    """The first release's base model (models/base_t2v/model_config.yaml): its 5-D UNet, transformers' CLIP text
    tower (sizes from a `clip_text_config.json` beside the YAML, else ViT-L/14's), no fps; sampling defaults of
    its run script (50 DDIM steps, guidance 15, eta 1, 8 frames a second written)."""
    for key, expected in _RELEASE_UNET.items():
        if unet_in.get(key, expected) != expected:
            raise VcraftError(f"{path}: unet setting {key} other than {expected} is not supported")
    unet = {"family": "lvdm", **{k: unet_in[k] for k in _RELEASE_UNET_SIZES if k in unet_in}}
    beside = path.parent / "clip_text_config.json"
    clip = {**_VIT_L_14_TEXT, **(json.loads(beside.read_text()) if beside.is_file() else {})}
    if clip.get("intermediate_size", 4 * clip["hidden_size"]) != 4 * clip["hidden_size"]:
        raise VcraftError(f"{beside}: only an MLP of 4x the width is supported")
    text = {"family": "clip", "width": clip["hidden_size"], "heads": clip["num_attention_heads"],
            "layers": clip["num_hidden_layers"], "context_length": clip["max_position_embeddings"],
            "vocab_size": clip["vocab_size"], "embed_dim": clip["projection_dim"], "layer": "last"}
    autoencoder = _autoencoder(vae_in, path)
    control = _depth_control(params, unet, autoencoder, path) if "adapter_config" in params else {}
    return {
        "name": path.stem,
        "model": {"unet": unet, "autoencoder": autoencoder, "text_encoder": text,
                  "schedule": {**_schedule(params), "noise_every_step": True},
                  "scale_factor": params.get("scale_factor", 0.18215), **control.get("model", {})},
        "sampling": {**_size(params, autoencoder, [32, 32]), "steps": 50, "guidance": 15.0, "eta": 1.0,
                     "save_fps": 8},
        "parts": control.get("parts", {}),
    }


def _depth_control(params: dict, unet: dict, autoencoder: dict, path: Path) -> dict:
    """VideoControl's YAML (models/adapter_t2v_depth/model_config.yaml): its adapter, and MiDaS DPT-hybrid at the
    YAML's `model_path` (relative to the YAML), its sizes from a `midas_tiny.json` beside it, else the official ones."""
    adapter_in = params["adapter_config"]
    adapter = dict(adapter_in.get("params") or {})
    downscale = 2 ** (len(autoencoder.get("ch_mult", [1, 2, 4, 4])) - 1)
    release = {"sk": True, "use_conv": False, "cin": downscale * downscale}
    for key, expected in release.items():
        if adapter.get(key, expected) != expected:
            raise VcraftError(f"{path}: adapter setting {key} other than {expected} is not supported")
    depth_in = dict((params.get("depth_stage_config") or {}).get("params") or {})
    if adapter_in.get("cond_name", "depth") != "depth" or depth_in.get("model_type", "dpt_hybrid") != "dpt_hybrid":
        raise VcraftError(f"{path}: only the depth adapter with MiDaS dpt_hybrid is supported")
    beside = path.parent / "midas_tiny.json"
    sizes = {k: v for k, v in json.loads(beside.read_text()).items() if k not in ("official", "kept")} \
        if beside.is_file() else {}
    widths = [unet["model_channels"] * k for k in unet["channel_mult"]]
    if adapter.get("channels", widths) != widths:
        raise VcraftError(f"{path}: the adapter's channels must be the UNet's widths level by level, {widths}")
    model = {"adapter": {"signal": "depth", **{ours: adapter[theirs] for ours, theirs in
                                               (("blocks", "nums_rb"), ("kernel", "ksize")) if theirs in adapter}},
             "depth": sizes}
    parts = {"adapter": {}}  # a file the YAML does not name: --adapter gives it
    if "model_path" in depth_in:
        parts["depth_estimator"] = {"path": str(path.parent / depth_in["model_path"])}
    return {"model": model, "parts": parts}


def _autoencoder(vae_in: dict, path: Path) -> dict:
    dd = dict(vae_in.get("ddconfig", {}))
    if dd.get("attn_resolutions"):
        raise VcraftError(f"{path}: autoencoder attn_resolutions must be empty, as in VideoCrafter")
    autoencoder = {k: dd[k] for k in ("in_channels", "out_ch", "z_channels", "ch", "ch_mult", "num_res_blocks")
                   if k in dd}
    autoencoder["embed_dim"] = vae_in.get("embed_dim", 4)
    return autoencoder


def _schedule(params: dict) -> dict:
    return {k: params[k] for k in ("timesteps", "linear_start", "linear_end", "use_scale", "scale_a", "scale_b",
                                   "mid_step", "fix_scale_bug") if k in params}


def _size(params: dict, autoencoder: dict, default: list[int]) -> dict:
    """The video size the config's latent `image_size` means."""
    latent_hw = params.get("image_size", default)
    latent_hw = [latent_hw, latent_hw] if isinstance(latent_hw, int) else latent_hw
    downsample = 2 ** (len(autoencoder.get("ch_mult", [1, 2, 4, 4])) - 1)
    return {"height": latent_hw[0] * downsample, "width": latent_hw[1] * downsample}


def _open_clip_config(arch: str, yaml_path: Path) -> dict:
    """An OpenCLIP architecture's config: from a JSON beside the YAML, else open_clip's registry."""
    beside = yaml_path.parent / "open_clip_config.json"
    model_cfg = None
    if beside.is_file():
        model_cfg = json.loads(beside.read_text()).get(arch)
    if model_cfg is None:
        import open_clip  # heavy import; only for configs that name an architecture

        model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise VcraftError(f"unknown OpenCLIP architecture '{arch}': put its config in {beside}")
    return model_cfg


def _text_dims(model_cfg: dict) -> dict:
    text = model_cfg["text_cfg"]
    return {"width": text["width"], "heads": text["heads"], "layers": text["layers"],
            "context_length": text.get("context_length", 77), "vocab_size": text.get("vocab_size", 49408),
            "embed_dim": model_cfg["embed_dim"]}


def _image_dims(model_cfg: dict, yaml_path: Path, unet: dict) -> dict:
    """The image encoder of an image-to-video model: the vision tower's sizes from its OpenCLIP architecture, the
    Resampler's from an `image_proj.json` beside the YAML (sizes under the original's names), else the
    original's own."""
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    dims = {"width": vision["width"], "heads": vision["width"] // vision.get("head_width", 64),
            "layers": vision["layers"], "patch_size": vision["patch_size"], "image_size": vision["image_size"],
            "embed_dim": model_cfg["embed_dim"], "text_width": text["width"],
            "context_length": text.get("context_length", 77), "vocab_size": text.get("vocab_size", 49408)}
    beside = yaml_path.parent / "image_proj.json"
    if beside.is_file():
        sizes = json.loads(beside.read_text())
        dims.update({ours: sizes[theirs] for ours, theirs in _RESAMPLER.items() if theirs in sizes})
        expected = {"embedding_dim": dims["width"], "output_dim": unet.get("context_dim")}
        for key, value in expected.items():
            if key in sizes and sizes[key] != value:
                raise VcraftError(f"{beside}: {key} is {sizes[key]}, but the model's is {value}")
    return dims
