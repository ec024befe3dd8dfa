"""SDXL: our UNet (UNetConfig.sdxl() structure) against diffusers' UNet2DConditionModel with an
SDXL-style config on the same random weights, loaded through weights/ from a diffusers folder."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from diffusers import UNet2DConditionModel as RefUNet
from conftest import SDXL_UNET, TINY_CLIP_2, TINY_SDXL_UNET, TINY_SDXL_VAE, save_diffusers_folder
from test_model_parity import assert_close, unet_inputs

import weights
from models import UNet, UNetConfig
from models.backbones import backbone_of
from models.text_encoder import SDXLTextEncoder
from models.unet import Conditioning


@pytest.fixture(scope="module")
def sdxl_folder(tiny_sdxl_unet_folder):
    return tiny_sdxl_unet_folder


def test_tiny_sdxl_folder_gives_the_tiny_sdxl_config(sdxl_folder):
    assert weights.load_unet(sdxl_folder).cfg == UNetConfig.tiny_sdxl()


@pytest.mark.parametrize("size", [16, 9])
def test_sdxl_style_unet_matches_diffusers(sdxl_folder, size):
    ours, ref = weights.load_unet(sdxl_folder), RefUNet.from_pretrained(sdxl_folder / "unet").eval()
    x, t, cond = unet_inputs(ours.cfg, size)
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=cond.context,
                       added_cond_kwargs=dict(text_embeds=cond.pooled, time_ids=cond.time_ids)).sample
        assert_close(ours(x, t, cond), expected)
        # the added embedding matters: other size numbers, another output
        other = Conditioning(cond.context, cond.pooled, cond.time_ids.flip(0))
        assert (ours(x, t, other) - expected).abs().max() > 1e-3 * expected.abs().max()


def test_sdxl_unet_without_pooled_embedding_says_what_it_needs(sdxl_folder):
    unet = weights.load_unet(sdxl_folder)
    x, t, cond = unet_inputs(unet.cfg)
    with pytest.raises(ValueError, match="pooled text embedding and size time ids"):
        unet(x, t, cond.context)


def test_sdxl_base_has_70_self_attention_layers():
    with torch.device("meta"):
        unet = UNet(UNetConfig.sdxl())
    assert unet.num_self_attention_layers == 70  # down 2x2 + 2x10, mid 10, up 3x10 + 3x2
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684  # diffusers' SDXL base UNet


# -- text conditioning: both encoders, pooled projection, size ids -----------------------------

def diffusers_sdxl_pipeline(folder):
    """diffusers' StableDiffusionXLPipeline assembled from the folder's components (the reference for
    encode_prompt and the size time ids)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    return StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(folder / "vae"), unet=RefUNet.from_pretrained(folder / "unet"),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"))


def test_sdxl_text_encoders_match_diffusers_encode_prompt(tiny_sdxl_folder):
    encoder = weights.load_text_encoder(tiny_sdxl_folder)
    assert isinstance(encoder, SDXLTextEncoder) and encoder.width == UNetConfig.tiny_sdxl().context_dim
    ref = diffusers_sdxl_pipeline(tiny_sdxl_folder)
    prompts = ["the cat", "a dog on the hat"]
    context, _, pooled, _ = ref.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    ours = encoder(prompts)
    assert ours.context.shape == (2, 77, 48) and ours.pooled.shape == (2, 16)
    assert_close(ours.context, context)
    assert_close(ours.pooled, pooled)
    # and the size ids the UNet gets for a 96 x 64 (w x h) image, as diffusers builds them
    ids = ref._get_add_time_ids((64, 96), (0, 0), (64, 96), torch.float32, text_encoder_projection_dim=16)
    assert torch.equal(Conditioning(context[:1]).at_size(96, 64).time_ids, ids)


# -- the pipeline and the CLI, end to end on the tiny SDXL ---------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_tiny_sdxl_edit_end_to_end(tiny_sdxl_folder):
    from regiondrag.pipeline import RegionDragPipeline
    from regiondrag.apps.region_file import regions_from_json

    pipe = RegionDragPipeline.from_pretrained(str(tiny_sdxl_folder), device="cpu", dtype=torch.float32)
    assert pipe.backbone == "sdxl" and pipe.vae.scaling_factor == 0.13025  # from vae/config.json
    assert (pipe.config.max_side, pipe.config.ip_scale) == (1024, 0.6)  # the reference's xl settings
    photo = Image.open(EXAMPLES / "chelsea.png").convert("RGB")
    result = pipe.edit(photo, regions_from_json(EXAMPLES / "chelsea.json", photo.size), max_side=64, steps=10,
                       progress=False, return_intermediates=True)
    assert result.image.size == photo.size
    cond = result.inversion.context
    assert torch.equal(cond.time_ids, torch.tensor([[40.0, 64, 0, 0, 40, 64]]))  # the 64 x 40 working image
    assert np.asarray(result.image).std() > 1  # not a flat image


def test_another_vae_from_its_own_folder_replaces_the_pipelines(tiny_sdxl_folder, tmp_path):
    """--vae SRC: a VAE published alone (config.json and weights at the folder's root, as the fp16-safe
    SDXL VAE is) is loaded instead of the pipeline folder's vae/."""
    from diffusers import AutoencoderKL

    from conftest import randomize_norms
    from regiondrag.pipeline import RegionDragPipeline

    torch.manual_seed(7)
    randomize_norms(AutoencoderKL(**TINY_SDXL_VAE)).save_pretrained(tmp_path / "fp16-safe-vae")
    pipe = RegionDragPipeline.from_pretrained(str(tiny_sdxl_folder), vae=str(tmp_path / "fp16-safe-vae"),
                                              device="cpu", dtype=torch.float32)
    own = weights.load_vae(tiny_sdxl_folder)
    alone = AutoencoderKL.from_pretrained(tmp_path / "fp16-safe-vae")
    assert torch.equal(pipe.vae.decoder.conv_in.weight, alone.decoder.conv_in.weight)
    assert not torch.equal(pipe.vae.decoder.conv_in.weight, own.decoder.conv_in.weight)


def test_cli_edit_runs_on_a_tiny_sdxl(tiny_sdxl_folder, tmp_path, capsys):
    from regiondrag.apps.cli import main

    out = tmp_path / "edited.png"
    code = main([str(a) for a in ("edit", "--image", EXAMPLES / "chelsea.png", "--regions", EXAMPLES / "chelsea.json",
                                  "--out", out, "--weights", tiny_sdxl_folder, "--max-side", "64", "--quiet",
                                  "--device", "cpu", "--dtype", "fp32", "--steps", "10")])
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size == Image.open(EXAMPLES / "chelsea.png").size


# -- IP-Adapter-Plus SDXL against diffusers' IP-Adapter processors --------------------------------

def test_sdxl_ip_adapter_plus_matches_diffusers(tiny_sdxl_unet_folder, tmp_path):
    from safetensors.torch import save_file
    from test_ip_adapter import load_into_diffusers, official_state_dict

    from models.attention import ImagePrompt
    from models.resampler import ResamplerConfig
    from weights.ip_adapter import load_ip_adapter

    rcfg = ResamplerConfig.tiny(output_dim=UNetConfig.tiny_sdxl().context_dim)
    dunet = RefUNet.from_pretrained(tiny_sdxl_unet_folder / "unet").eval()
    state = official_state_dict(dunet, rcfg)
    assert len([k for k in state if k.endswith("to_k_ip.weight")]) == 2 * 2 + 2 * 3 + 3 + 3 * 3 + 3 * 2
    save_file(state, tmp_path / "ip-adapter-plus_sdxl_vit-h.safetensors")
    unet = weights.load_unet(tiny_sdxl_unet_folder)
    resampler = load_ip_adapter(tmp_path / "ip-adapter-plus_sdxl_vit-h.safetensors", unet).eval()
    assert resampler.cfg == rcfg  # inferred from the file's shapes
    load_into_diffusers(dunet, state, 0.6)
    x, t, cond = unet_inputs(unet.cfg)
    features = torch.randn(2, 17, rcfg.embedding_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = unet(x, t, cond, image_prompt=ImagePrompt(resampler(features), 0.6))
        ref = dunet(x, t, encoder_hidden_states=cond.context,
                    added_cond_kwargs=dict(text_embeds=cond.pooled, time_ids=cond.time_ids,
                                           image_embeds=[features[:, None]])).sample
        plain = unet(x, t, cond)
    assert_close(ours, ref)
    assert (ours - plain).abs().max() > 1e-2 * plain.abs().max()  # the image branch does contribute


def test_sdxl_edit_uses_the_references_ip_scale_by_default(tiny_sdxl_folder):
    """SDXL's default image-prompt scale is the reference's 0.6 (SD1.5's 0.5), when none is given."""
    from regiondrag.pipeline import RegionDragPipeline

    pipe = RegionDragPipeline.from_pretrained(str(tiny_sdxl_folder), device="cpu", dtype=torch.float32)
    scales = []
    pipe.image_prompter = lambda photo, scale: scales.append(scale)  # None: no image tokens after all
    mapping = (np.array([[1, 1]]), np.array([[3, 2]]))
    pipe.edit(Image.new("RGB", (64, 48), "gray"), mapping=mapping, max_side=64, steps=4, progress=False)
    pipe.edit(Image.new("RGB", (64, 48), "white"), mapping=mapping, max_side=64, steps=4, ip_scale=0.3, progress=False)
    assert scales == [0.6, 0.3]


# -- the original single-file SDXL layout ---------------------------------------------------------

# SDXL's conventions at small size, so that the config is inferred from the shapes: 32 norm groups,
# 64-wide heads, 2048-wide context, 256-wide size embeddings next to a 1280-wide pooled embedding
SDXL_STYLE_UNET = dict(TINY_SDXL_UNET, block_out_channels=(64, 64, 128), layers_per_block=1,
                       transformer_layers_per_block=(1, 2, 2), attention_head_dim=(1, 1, 2), cross_attention_dim=2048,
                       norm_num_groups=32, addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
SDXL_STYLE_VAE = dict(TINY_SDXL_VAE, block_out_channels=(32, 32, 64, 64), norm_num_groups=32)
SDXL_STYLE_CLIP_2 = dict(TINY_CLIP_2, projection_dim=1280)


def test_sdxl_single_file_loads_like_the_diffusers_folder(tmp_path):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)
    from safetensors.torch import load_file, save_file
    from test_sd21 import to_open_clip, with_text_model_prefix
    from test_weights import assert_same_tensors, to_original_unet, to_original_vae
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = save_diffusers_folder(tmp_path / "xl", unet=SDXL_STYLE_UNET, vae=SDXL_STYLE_VAE,
                                   text_encoder_2=SDXL_STYLE_CLIP_2, seed=6)
    unet, vae = RefUNet.from_pretrained(folder / "unet").eval(), AutoencoderKL.from_pretrained(folder / "vae")
    clip = with_text_model_prefix(load_file(folder / "text_encoder" / "model.safetensors"))
    clip_2 = with_text_model_prefix(load_file(folder / "text_encoder_2" / "model.safetensors"))
    state = {**to_original_unet(unet.state_dict(), dict(unet.config)),
             **to_original_vae(vae.state_dict(), dict(vae.config)),
             **{"conditioner.embedders.0.transformer." + k: v for k, v in clip.items()},
             **to_open_clip(clip_2, "conditioner.embedders.1.model.")}
    # the layout really is the original one: diffusers' converters give back diffusers' tensors
    assert_same_tensors(convert_ldm_unet_checkpoint(state, dict(unet.config)), unet.state_dict())
    assert_same_tensors(convert_ldm_vae_checkpoint(state, dict(vae.config)), vae.state_dict())
    assert_same_tensors(convert_ldm_clip_checkpoint(
        {k: v for k, v in state.items() if k.startswith("conditioner.embedders.0.")}), clip)
    model_2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_STYLE_CLIP_2))
    assert_same_tensors(convert_open_clip_checkpoint(model_2, state, prefix="conditioner.embedders.1.model."), clip_2)
    path = tmp_path / "sdxl.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)

    ours = weights.load_unet(path)  # config inferred: SDXL's structure, text_time 1280 + 6 x 256
    assert ours.cfg == weights.load_unet(folder).cfg and backbone_of(ours.cfg) == "sdxl"
    x, t, cond = unet_inputs(ours.cfg, size=8)
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=cond.context,
                        added_cond_kwargs=dict(text_embeds=cond.pooled, time_ids=cond.time_ids)).sample
        assert_close(ours(x, t, cond), expected)
    ours_vae = weights.load_vae(path)
    assert ours_vae.scaling_factor == 0.13025  # SDXL's, though the file does not record it
    assert_same_tensors(ours_vae.state_dict(), weights.load_vae(folder).state_dict())
    # both text encoders (tiny widths: their configs are given), tokenizers from the folder
    configs = [CLIPTextConfig.from_pretrained(folder / c) for c in ("text_encoder", "text_encoder_2")]
    text = weights.load_text_encoder(path, config=configs, tokenizer=folder)
    ref = weights.load_text_encoder(folder)
    a, b = text(["the cat", "a hat"]), ref(["the cat", "a hat"])
    assert_close(a.context, b.context)
    assert_close(a.pooled, b.pooled)


# -- SDXL base at its real widths and depths ------------------------------------------------------

def test_sdxl_base_config_translates_to_the_preset(tmp_path):
    from weights.diffusers_layout import unet_config

    assert unet_config(dict(SDXL_UNET), tmp_path / "config.json") == UNetConfig.sdxl()


@pytest.mark.slow
def test_sdxl_base_shapes_unet_matches_diffusers():
    """The full SDXL UNet (2.6 B parameters, ~10 GB in fp32) once in memory: ours is built on the meta
    device and takes diffusers' tensors themselves (assign=True), so both compute with one storage."""
    from conftest import randomize_norms

    torch.manual_seed(0)
    ref = randomize_norms(RefUNet(**SDXL_UNET)).eval()
    with torch.device("meta"):
        ours = UNet(UNetConfig.sdxl())
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    assert ours.conv_in.weight.data_ptr() == ref.conv_in.weight.data_ptr()  # shared, not copied
    x, t, cond = unet_inputs(ours.cfg, size=32)
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=cond.context,
                       added_cond_kwargs=dict(text_embeds=cond.pooled, time_ids=cond.time_ids)).sample
        out, kvs = ours.forward_recording_kv(x, t, cond)
    assert_close(out, expected)
    assert len(kvs) == 70


# -- K/V record/replay and attention swap through the pipeline, on the SDXL structure -------------

@pytest.fixture(scope="module")
def xl_pipe():
    from models import AutoencoderKL, VAEConfig
    from regiondrag.pipeline import RegionDragPipeline

    torch.manual_seed(0)
    cfg = UNetConfig.tiny_sdxl()
    cond = Conditioning(torch.randn(1, 77, cfg.context_dim), torch.randn(1, cfg.pooled_text_dim))
    return RegionDragPipeline(UNet(cfg).eval(), AutoencoderKL(VAEConfig.tiny()).eval(), lambda prompt: cond)


XL_SHIFT = (np.array([[1, 1], [2, 1]]), np.array([[5, 1], [6, 1]]))
XL_FAST = dict(steps=8, start_t=0.5, max_side=None, progress=False)
PHOTO_64x48 = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_sdxl_denoising_call_j_replays_every_layers_kv_of_inversion_step_n_minus_1_minus_j(xl_pipe):
    from test_pipeline import UNetRecorder

    xl_pipe.clear_cache()
    with UNetRecorder(xl_pipe.unet) as rec:
        xl_pipe.edit(PHOTO_64x48, mapping=XL_SHIFT, **XL_FAST)
    recorded = [c.kv_out for c in rec.recording]
    n = len(recorded)
    assert n == 4 and all(len(kvs) == 28 for kvs in recorded)
    for j, call in enumerate(rec.calls[-n:]):
        assert call.kv is not None and len(call.kv) == 28, f"step {j}"
        for layer, (k, v) in enumerate(call.kv):
            rk, rv = recorded[n - 1 - j][layer]
            assert k.data_ptr() == rk.data_ptr() and v.data_ptr() == rv.data_ptr(), f"step {j} layer {layer}"


def test_sdxl_attention_swap_of_one_deep_layer_changes_the_edit(xl_pipe):
    """Layer 27 (the last block of the last up-level transformer) alone: the selection reaches it."""
    from regiondrag.attention_swap import AttentionSwap

    def final(swap):
        xl_pipe.clear_cache()
        return xl_pipe.edit(PHOTO_64x48, mapping=XL_SHIFT, attention_swap=swap, return_intermediates=True,
                            **XL_FAST).denoising.latents[-1]

    off = final(AttentionSwap(enabled=False))
    assert not torch.allclose(final(AttentionSwap(layers=frozenset({27}))), off, atol=1e-5)


def test_sdxl_unet_traces_as_one_graph_with_its_conditioning():
    """The Conditioning argument is plain data to dynamo: one graph, no breaks (recording K/V; the
    replay patterns are test_fast_path's, for any UNet)."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig.tiny_sdxl()).eval()
    x, t, cond = unet_inputs(unet.cfg, size=8)
    explained = torch._dynamo.explain(unet.forward_recording_kv)(x, t, cond)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_tiny_sdxl_edit_in_fp16_has_no_nans(tiny_sdxl_folder):
    """fp16 end to end (the pooled embedding and size ids in half precision too): a finite, non-flat image."""
    from regiondrag.pipeline import RegionDragPipeline

    pipe = RegionDragPipeline.from_pretrained(str(tiny_sdxl_folder), device="cpu", dtype=torch.float16)
    mapping = (np.array([[1, 1]]), np.array([[3, 2]]))
    result = pipe.edit(PHOTO_64x48, mapping=mapping, max_side=64, steps=8, progress=False, return_intermediates=True)
    assert result.inversion.context.pooled.dtype == torch.float16
    assert torch.isfinite(result.denoising.latents[-1]).all() and np.asarray(result.image).std() > 1
