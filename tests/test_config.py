"""Config reading: presets, original VideoCrafter YAMLs, overrides, validation."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from reference import PRESET_OF, VARIANTS, reference_dir

from vcraft.config import apply_overrides, load_config, load_preset, preset_names
from vcraft.errors import VcraftError
from vcraft.pipeline.settings import make_settings


@pytest.mark.parametrize("variant", [*VARIANTS, "vc1_i2v_512"])
def test_official_yaml_reads_as_its_preset(tmp_path, variant):
    """The tiny YAMLs are the official ones with sizes shrunk; put the official sizes back (and drop the
    tiny CLIP architecture, so ViT-H-14 comes from open_clip, and the Resampler sizes beside the tiny YAML, so the
    original's own apply) and the preset must come out."""
    data = OmegaConf.load(reference_dir() / "tiny" / variant / "config.yaml")
    p = data.model.params
    p.image_size = [72, 128] if variant == "vc1_1024" else [40, 64]
    p.unet_config.params.update(model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=2,
                                num_head_channels=64, context_dim=1024)
    p.first_stage_config.params.ddconfig.update(ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)
    del p.cond_stage_config.params["arch"]
    if "cond_img_config" in p:
        del p.cond_img_config.params["arch"]
    path = tmp_path / "inference.yaml"
    OmegaConf.save(data, path)
    cfg = load_config(path)
    preset = load_preset({**PRESET_OF, "vc1_i2v_512": "vc1-i2v-512"}[variant])
    assert cfg.model == preset.model
    assert (cfg.sampling.height, cfg.sampling.width) == (preset.sampling.height, preset.sampling.width)


def test_presets_and_overrides():
    assert {"shapes", "vc2-512", "vc1-512", "vc1-1024", "vc1-i2v-512"} <= set(preset_names())
    cfg = load_config(reference_dir() / "tiny" / "vc2_512" / "config.yaml",
                      ["sampling.steps=7", "model.schedule.scale_b=0.5"])
    assert cfg.sampling.steps == 7 and cfg.model.schedule.scale_b == 0.5
    assert cfg.model.text_encoder.width == 16 and cfg.model.text_encoder.heads == 4  # from open_clip_config.json
    with pytest.raises(VcraftError, match="--set"):
        load_config(reference_dir() / "tiny" / "vc2_512" / "config.yaml", ["sampling.steps"])
    with pytest.raises(VcraftError, match="invalid"):
        load_config(reference_dir() / "tiny" / "vc2_512" / "config.yaml", ["sampling.steps=many"])


def test_bad_config_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(VcraftError, match="cannot read config"):
        load_config(broken)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  unet:\n    wings: 3\n")
    with pytest.raises(VcraftError, match="wings"):
        load_config(unknown)
    with pytest.raises(VcraftError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_settings_validation():
    """Every default comes from the config; each bad value is refused with the option it came from."""
    cfg = load_preset("vc2-512")
    settings = make_settings(cfg, "a fox")
    assert (settings.frames, settings.steps, settings.guidance, settings.seed, settings.negative) == \
        (cfg.sampling.frames, cfg.sampling.steps, cfg.sampling.guidance, 0, "")
    assert (settings.overlap, settings.extend) == (4, "replace")  # a quarter of the clip; no frame conditioning
    for field, value in (("frames", 0), ("height", 300), ("width", 0), ("steps", 0), ("eta", -1.0), ("fps", 0)):
        with pytest.raises(VcraftError, match=f"--{field}"):
            make_settings(cfg, "a fox", **{field: value})
    for field, value, message in (("frames", "8", "'frames' must be a number"), ("seed", 1.5, "'seed'"),
                                  ("negative", 3, "'negative' must be text"), ("colour", "red", "unknown setting"),
                                  ("seed", -1, "out of range")):
        with pytest.raises(VcraftError, match=message):
            make_settings(cfg, "a fox", **{field: value})
    with pytest.raises(VcraftError, match="a prompt is empty"):
        make_settings(cfg, "  ")


def test_model_configs_that_cannot_be_built_are_config_errors():
    with pytest.raises(VcraftError, match="norm_groups"):
        apply_overrides(load_preset("shapes"), ["model.unet.norm_groups=7"])
    with pytest.raises(VcraftError, match="layer must be"):
        apply_overrides(load_preset("shapes"), ["model.text_encoder.layer=first"])


def test_model_inputs_must_fit_the_latents():
    """Frame conditioning needs 2 * latent + 1 UNet inputs; the parameterization is eps or v."""
    assert load_preset("shapes").model.unet.in_channels == 9
    with pytest.raises(VcraftError, match="must take 4 channels"):
        apply_overrides(load_preset("shapes"), ["model.frame_conditioning=false"])
    with pytest.raises(VcraftError, match="parameterization"):
        apply_overrides(load_preset("vc2-512"), ["model.parameterization=x0"])


def test_frame_noise_share_is_a_fraction():
    with pytest.raises(VcraftError, match="frame_noise_share must be in"):
        apply_overrides(load_preset("shapes"), ["model.schedule.frame_noise_share=1"])


def test_training_timesteps_exponent_must_be_positive():
    assert apply_overrides(load_preset("shapes"), ["train.diffusion.timestep_exponent=0.5"]).train is not None
    with pytest.raises(VcraftError, match="timestep_exponent must be above 0"):
        apply_overrides(load_preset("shapes"), ["train.diffusion.timestep_exponent=0"])
