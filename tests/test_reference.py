"""Every stage of the model stack against the original VideoCrafter's numbers (../shared/reference), for the three
text-to-video architectures and the image-to-video one (its image path: tests/test_image_to_video.py)."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from reference import PRESET_OF, VARIANTS, assert_close, reference_dir
from safetensors.torch import load_file

from vcraft.config import load_config
from vcraft.loaders.checkpoints import load_state_dict
from vcraft.loaders.loading import load_models
from vcraft.sampling.conditioning import Conditioning
from vcraft.sampling.ddim import sample as ddim_sample
from vcraft.sampling.denoisers import Denoiser
from vcraft.sampling.schedule import q_sample

_cache: dict = {}


def fixture(variant: str, container: str = "model.safetensors"):
    key = (variant, container)
    if key not in _cache:
        root = reference_dir() / "tiny" / variant
        cfg = load_config(root / "config.yaml")
        models = load_models(cfg.model, load_state_dict(root / container), container, encoder=True)
        cases = load_file(root / "cases.safetensors")
        meta = json.loads((root / "cases.json").read_text())
        _cache[key] = (models, cases, meta)
    return _cache[key]


I2V = "vc1_i2v_512"


@pytest.fixture(params=[*VARIANTS, I2V])
def variant(request):
    return request.param


@pytest.mark.parametrize("container", ["model.ckpt", "model.safetensors"])
def test_both_containers_load_the_same_weights(variant, container):
    models, cases, _ = fixture(variant, container)
    with torch.inference_mode():
        out = models.unet(cases["unet.x"], cases["unet.t"], cases["unet.context"], cases["unet.fps"])
    assert_close(out, cases["unet.output"], 1e-5, 1e-5, 1e-6, f"{variant} unet via {container}")


def test_text(variant):
    models, cases, meta = fixture(variant)
    prompts = meta["cases"]["text"]["inputs"]["prompts"]
    tokens = models.text_encoder.tokenize(prompts)
    assert torch.equal(tokens, cases["text.tokens"])
    with torch.inference_mode():
        out = models.text_encoder(tokens)
        alone = models.text_encoder.encode([""])
    assert_close(out, cases["text.output"], 1e-5, 1e-5, 1e-6, "text")
    assert torch.equal(alone[0], out[1]), "the empty prompt must not depend on its batch"


def test_vae_decode(variant):
    models, cases, _ = fixture(variant)
    with torch.inference_mode():
        out = models.autoencoder.decode(cases["vae_decode.z"], chunk=3)
    assert_close(out, cases["vae_decode.output"], 1e-5, 1e-5, 1e-6, "vae_decode")


def test_without_its_encoder_the_autoencoder_decodes_the_same_and_refuses_to_encode(variant):
    """What generation loads by default: the checkpoint's encoder tensors are skipped, not demanded."""
    from vcraft.errors import VcraftError

    root = reference_dir() / "tiny" / variant
    models = load_models(load_config(root / "config.yaml").model, load_state_dict(root / "model.ckpt"), "tiny")
    cases = fixture(variant)[1]
    assert models.autoencoder.encoder is None
    with torch.inference_mode():
        out = models.autoencoder.decode(cases["vae_decode.z"])
        with pytest.raises(VcraftError, match="without its encoder"):
            models.autoencoder.encode(cases["vae_encode.frames"])
    assert_close(out, cases["vae_decode.output"], 1e-5, 1e-5, 1e-6, "vae_decode")


def test_vae_keys_are_renamed_as_diffusers_converter_renames_them(variant):
    """vcraft's own renaming of the official autoencoder keys (no diffusers import when loading) gives exactly the
    state dict diffusers' converter gives."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from vcraft.loaders.components import split
    from vcraft.models.autoencoder import convert_ldm_vae_keys, diffusers_vae_config

    root = reference_dir() / "tiny" / variant
    cfg = load_config(root / "config.yaml").model.autoencoder
    vae = split(load_state_dict(root / "model.safetensors"), variant)[0]["autoencoder"]
    ours = convert_ldm_vae_keys(vae, cfg)
    theirs = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in vae.items()}, diffusers_vae_config(cfg))
    assert sorted(ours) == sorted(theirs) and len(ours) == len(vae)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("band_pixels", [2 ** 14, 200, 1])
def test_vae_decoder_is_diffusers_decoder_within_fp32_rounding(monkeypatch, band_pixels):
    """vcraft's banded decoder, given diffusers' Decoder's weights, is no further from a float64 evaluation
    than diffusers' own fp32 output is; also with bands of 2 rows and of 1 row (every band has edges)."""
    from diffusers import AutoencoderKL

    from vcraft.config import AutoencoderConfig
    from vcraft.models import vae_decoder
    from vcraft.models.autoencoder import diffusers_vae_config

    monkeypatch.setattr(vae_decoder, "CPU_BAND_PIXELS", band_pixels)
    torch.manual_seed(0)
    cfg = AutoencoderConfig(ch=32, ch_mult=[1, 2, 2, 2], num_res_blocks=1, norm_groups=8)
    theirs = AutoencoderKL(**diffusers_vae_config(cfg)).decoder.eval()
    for norm in (m for m in theirs.modules() if isinstance(m, torch.nn.GroupNorm)):
        torch.nn.init.normal_(norm.weight, 1.0, 0.3)  # not the identity, so scale and shift are checked
        torch.nn.init.normal_(norm.bias, 0.0, 0.3)
    ours = vae_decoder.Decoder(cfg).eval()
    ours.load_state_dict(theirs.state_dict())
    z = torch.randn(2, 4, 9, 12) * 3 + 1  # an offset mean: the pooled group statistics must not cancel
    with torch.inference_mode():
        out, fp32 = ours(z), theirs(z)
        exact = theirs.double()(z.double())
    assert out.shape == (2, 3, 72, 96)
    assert (out.double() - exact).abs().max() <= 1.5 * (fp32.double() - exact).abs().max()


def test_vae_encode(variant):
    models, cases, _ = fixture(variant)
    frames = cases["vae_encode.frames"]
    with torch.inference_mode():
        moments = models.autoencoder.encode_moments(frames)
        mode = models.autoencoder.encode(frames)
        sample = models.autoencoder.encode(frames, noise=cases["vae_encode.posterior_noise"])
    assert_close(moments, cases["vae_encode.moments"], 1e-5, 1e-5, 1e-6, "moments")
    assert_close(mode, cases["vae_encode.output_mode"], 1e-5, 1e-5, 1e-6, "mode")
    assert_close(sample, cases["vae_encode.output_sample"], 1e-5, 1e-5, 1e-6, "sample")


def test_q_sample(variant):
    models, cases, _ = fixture(variant)
    out = q_sample(models.schedule, cases["q_sample.x0"], cases["q_sample.t"], cases["q_sample.noise"])
    assert_close(out, cases["q_sample.output"], 1e-5, 1e-5, 1e-6, "q_sample")


@functools.cache  # one run a process for each case: the every-step and end-to-end tests share it
def _ddim(variant: str, guidance: float, eta: float, prefix: str):
    models, cases, meta = fixture(variant)
    case = meta["cases"][prefix]
    fps = torch.tensor([case["fps"]])
    steps = case["ddim_steps_argument"]
    with torch.inference_mode():
        uncond = models.text_encoder.encode([""])
        encoder = models.image_encoder
        image = {} if encoder is None else {  # the picture's tokens, and the zero image's
            "image": cases["ddim.img_emb"], "uncond_image": models.image_projector(encoder(encoder.blank(1)))}
        denoise = Denoiser(models.unet, Conditioning(cases["ddim.text_emb"], uncond, fps, **image), guidance)
        recorded = {}
        draws = iter([cases[k] for k in sorted(cases) if k.startswith(f"{prefix}.noise_step_")])
        out = ddim_sample(
            denoise, cases["ddim.x_T"], models.schedule, steps, eta, noise=lambda: next(draws),
            callback=lambda step: recorded.update({step.index - 1: (step.x.clone(), step.denoised.clone())}),
        )
    return out, recorded, cases


def test_ddim_cfg_every_step(variant):
    out, recorded, cases = _ddim(variant, 12.0, 0.0, "ddim_cfg")
    for i, (x, x0) in recorded.items():
        assert_close(x, cases[f"ddim_cfg.step_{i:02d}.x_prev"], 1e-4, 1e-4, what=f"step {i} x_prev")
        assert_close(x0, cases[f"ddim_cfg.step_{i:02d}.pred_x0"], 1e-4, 1e-4, what=f"step {i} pred_x0")
    assert len(recorded) == 10
    assert_close(out, cases["ddim_cfg.output"], 1e-4, 1e-4, what="ddim_cfg")


def test_ddim_nocfg(variant):
    out, _, cases = _ddim(variant, 1.0, 0.0, "ddim_nocfg")
    assert_close(out, cases["ddim_nocfg.output"], 1e-4, 1e-4, what="ddim_nocfg")


def test_guidance_stops_below_guidance_min_t():
    """With a guidance interval, steps at t >= min_t are guided as always and steps below it are the
    conditional prediction alone (one UNet pass)."""
    models, cases, _ = fixture("vc2_512")
    x, cond, fps = cases["ddim.x_T"], cases["ddim.text_emb"], torch.tensor([8])
    with torch.inference_mode():
        uncond = models.text_encoder.encode([""])
        always = Denoiser(models.unet, Conditioning(cond, uncond, fps), 12.0)
        interval = Denoiser(models.unet, Conditioning(cond, uncond, fps), 12.0, guidance_min_t=500)
        alone = Denoiser(models.unet, Conditioning(cond, None, fps), 12.0)
        assert torch.equal(interval(x, 500), always(x, 500))
        assert torch.equal(interval(x, 499), alone(x, 499))
        assert not torch.allclose(always(x, 499), alone(x, 499), atol=1e-3)  # guidance does change that step


def test_ddim_eta1(variant):
    out, _, cases = _ddim(variant, 12.0, 1.0, "ddim_eta1")
    assert_close(out, cases["ddim_eta1.output"], 1e-4, 1e-4, what="ddim_eta1")


def test_end_to_end_frames(variant):
    """DDIM with guidance, VAE decode and quantisation, through the public pipeline pieces."""
    from vcraft.pipeline.frames import frames_to_uint8

    out, _, cases = _ddim(variant, 12.0, 0.0, "ddim_cfg")
    models = fixture(variant)[0]
    with torch.inference_mode():
        video = models.autoencoder.decode(out)
    assert_close(video.clamp(-1, 1), cases["end_to_end.video_clamped"], 1e-4, 5e-4, what="video_clamped")
    frames = frames_to_uint8(video)[0]
    ref = cases["end_to_end.frames_uint8"]
    diff = (frames.int() - ref.int()).abs()
    assert frames.shape == ref.shape and diff.max() <= 1, f"max difference {int(diff.max())}"
    assert (diff > 0).float().mean() <= 0.01, f"{float((diff > 0).float().mean()):.4f} of values differ"


@pytest.mark.parametrize("variant,preset", PRESET_OF.items())
def test_full_size_presets_fit_the_official_layout(variant, preset):
    """Every key of the official checkpoint, with its shape, is placed in the preset's modules."""
    from vcraft.config import load_preset
    from vcraft.loaders.loading import build_models, place_checkpoint
    from vcraft.sampling.schedule import scale_array

    manifest = json.loads((reference_dir() / "manifests" / f"{variant}.json").read_text())
    state = {k: torch.empty(v["shape"], device="meta") for k, v in manifest["keys"].items()}
    cfg = load_preset(preset).model
    models = build_models(cfg, encoder=True)
    place_checkpoint(models, cfg, state, f"{variant} manifest")  # strict: raises on any difference
    placed = sum(p.numel() for m in (models.unet, models.autoencoder, models.text_encoder) for p in m.parameters())
    counts = manifest["param_counts"]
    assert placed == counts["unet"] + counts["vae"] + counts["text_encoder"]
    if "scale_arr" in state:
        assert list(state["scale_arr"].shape) == [len(scale_array(cfg.schedule))]
    else:
        assert not cfg.schedule.use_scale


def test_mismatched_preset_is_named():
    """A VideoCrafter1 checkpoint given to the VideoCrafter2 architecture fails with one clear message."""
    from vcraft.config import load_preset
    from vcraft.errors import VcraftError
    from vcraft.loaders.loading import build_models, place_checkpoint

    manifest = json.loads((reference_dir() / "manifests" / "vc1_512.json").read_text())
    state = {k: torch.empty(v["shape"], device="meta") for k, v in manifest["keys"].items()}
    cfg = load_preset("vc2-512").model
    with pytest.raises(VcraftError, match="does not fit the UNet"):
        place_checkpoint(build_models(cfg), cfg, state, "vc1.ckpt")


def test_ddim_timesteps_spacing():
    from vcraft.sampling.ddim import ddim_timesteps

    assert ddim_timesteps(10) == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    seven = ddim_timesteps(7)
    assert len(seven) == 8 and seven[0] == 1 and seven[-1] == 995
    assert len(ddim_timesteps(300)) == 334
    assert ddim_timesteps(3) == [1, 334, 667, 999]  # the reference would index past the schedule here
    assert ddim_timesteps(1000) == list(range(1, 1000))


@pytest.mark.parametrize("dtype,limit", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precision_stays_close_to_the_reference(variant, dtype, limit):
    """fp16/bf16 weights and activations: rounding noise only (bf16 keeps 8 bits of mantissa)."""
    root = reference_dir() / "tiny" / variant
    cfg = load_config(root / "config.yaml")
    models = load_models(cfg.model, load_state_dict(root / "model.safetensors"), "tiny", dtype=dtype)
    cases = fixture(variant)[1]
    with torch.inference_mode():
        unet = models.unet(cases["unet.x"].to(dtype), cases["unet.t"], cases["unet.context"].to(dtype),
                           cases["unet.fps"])
        text = models.text_encoder(cases["text.tokens"])
        video = models.autoencoder.decode(cases["vae_decode.z"].to(dtype))
    for name, ours in (("unet", unet), ("text", text), ("vae_decode", video)):
        assert ours.dtype == dtype
        ref = cases[f"{name}.output"]
        error = float((ours.float() - ref).norm() / ref.norm())
        assert error <= limit, f"{name} in {dtype}: rel L2 {error:.3g}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading moves weights between CPU memory and a GPU; "
                                                           "with the CPU alone there is nothing to move")
def test_offloading_changes_no_pixel():
    """--offload model moves each stage to the device only while it runs: same video, and the weights are
    back in CPU memory afterwards."""
    from vcraft.pipeline.api import TextToVideo

    device = "cuda"
    root = reference_dir() / "tiny" / "vc2_512"
    args = (str(root / "config.yaml"), root / "model.safetensors", device, "fp32")
    settings = dict(seed=3, frames=8, height=64, width=128, steps=4, guidance=7.5, eta=0.5)
    prompt = "a red fox running through snow"
    resident = TextToVideo.from_pretrained(*args)(prompt, **settings)
    offloaded = TextToVideo.from_pretrained(*args, offload=True)
    video = offloaded(prompt, **settings)
    assert video.shape == (8, 64, 128, 3) and video.std() > 0
    assert (video == resident).all()
    for module in (offloaded.text_encoder, offloaded.unet, offloaded.autoencoder):
        assert next(module.parameters()).device.type == "cpu"


@pytest.mark.slow
def test_compiling_the_unet_changes_no_pixel():
    """pipe.compile() (`vcraft generate --compile`) puts the UNet under torch.compile: same video. Backend
    "eager" runs TorchDynamo's captured graphs as they are, which checks that the UNet traces and that the
    compiled module is the one sampling calls; inductor's code generation would take minutes on 2 cores (its
    GPU speed is in docs/benchmarks.md). A small UNet with random weights (the embedded model's architecture with
    two levels), since tracing takes time in proportion to the layers."""
    from vcraft.config import apply_overrides, load_preset
    from vcraft.loaders.loading import build_models, ready_for_inference
    from vcraft.pipeline.api import TextToVideo

    small = ["model.unet.channel_mult=[1,2]", "model.unet.attention_resolutions=[2]", "model.text_encoder.layers=1"]
    cfg = apply_overrides(load_preset("shapes"), small)

    def pipe() -> TextToVideo:
        torch.manual_seed(0)
        models = ready_for_inference(build_models(cfg.model, "cpu"), torch.device("cpu"))
        return TextToVideo(cfg, models, torch.device("cpu"), torch.float32)

    settings = dict(seed=3, frames=8, height=32, width=32, steps=3, guidance=7.5, guidance_min_t=0)
    prompt = "a red circle moving left"
    eager = pipe()(prompt, **settings)
    compiled = pipe().compile(backend="eager")
    counts = torch._dynamo.utils.counters
    counts.clear()
    video = compiled(prompt, **settings)
    assert counts["stats"]["unique_graphs"] >= 1  # the UNet really ran through TorchDynamo
    assert (video == eager).all() and video.std() > 0
