"""Our UNet and VAE, loaded by weights/ from diffusers folders of random weights, against
diffusers' own models loaded from the same folders: outputs, K/V replay, fp16."""
import pytest
import torch
from regiondrag.apps.baseline import DiffusersUNet
from conftest import TINY_SD2_UNET, save_diffusers_folder
from diffusers import AutoencoderKL as RefVAE
from diffusers import UNet2DConditionModel as RefUNet

import weights
from models import UNet, UNetConfig
from models.unet import Conditioning



def assert_close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    assert torch.isfinite(ref).all() and ref.std() > 1e-2, "degenerate reference output: the test would prove nothing"
    err, scale = (ours.float() - ref.float()).abs().max().item(), ref.abs().max().item()
    assert err <= rel * scale, f"max-abs error {err:.3g} > {rel} x output scale {scale:.3g}"


def unet_inputs(cfg: UNetConfig, size: int = 16, seed: int = 0):
    """x, t and the context; for an SDXL-style UNet a Conditioning with pooled embedding and size ids."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cfg.in_channels, size, size, generator=g)
    context = torch.randn(2, 77, cfg.context_dim, generator=g)
    if cfg.addition_time_embed_dim:
        time_ids = torch.tensor([[1024.0, 768, 0, 0, 1024, 768], [512, 512, 16, 8, 640, 480]])
        context = Conditioning(context, torch.randn(2, cfg.pooled_text_dim, generator=g), time_ids)
    return x, torch.tensor([10, 700]), context


def check_unet(folder, size: int = 16) -> None:
    ours, ref = weights.load_unet(folder), RefUNet.from_pretrained(folder / "unet").eval()
    x, t, context = unet_inputs(ours.cfg, size)
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=context).sample
        assert_close(ours(x, t, context), expected)
    assert (expected[0] - expected[1]).abs().max() > 1e-2, "output does not depend on the input"


def check_vae(folder, size: int = 64) -> None:
    ours, ref = weights.load_vae(folder), RefVAE.from_pretrained(folder / "vae").eval()
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(ours.encode(images), ref.encode(images).latent_dist.mean)
        assert_close(ours.decode(latents), ref.decode(latents).sample)


def test_unet_matches_diffusers(tiny_sd_folder):
    check_unet(tiny_sd_folder)


@pytest.mark.parametrize("h, w", [(9, 14), (5, 8)])
def test_unet_matches_diffusers_at_odd_latent_sizes(tiny_sd_folder, h, w):
    """Photos rarely give latents divisible by 2^levels: each upsampling must meet its skip's size."""
    ours, ref = weights.load_unet(tiny_sd_folder), RefUNet.from_pretrained(tiny_sd_folder / "unet").eval()
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, h, w, generator=g), torch.randn(1, 77, ours.cfg.context_dim, generator=g)
    with torch.no_grad():
        assert_close(ours(x, 500, context), ref(x, 500, encoder_hidden_states=context).sample)


def test_vae_matches_diffusers(tiny_sd_folder):
    check_vae(tiny_sd_folder)


def test_unet_and_vae_run_under_autograd_as_without(tiny_sd_folder):
    """Their ResBlocks compute in place, on their own tensors only: with gradients on, the same output as without,
    and a gradient reaches the input (for ablations that optimise a latent through the models)."""
    unet, vae = weights.load_unet(tiny_sd_folder), weights.load_vae(tiny_sd_folder)
    x, t, context = unet_inputs(unet.cfg, 8)
    for model, call in ((unet, lambda x: model(x, t, context)), (vae, lambda x: model.decode(x))):
        with torch.no_grad():
            expected = call(x)
        latent = x.clone().requires_grad_(True)
        out = call(latent)
        out.square().sum().backward()
        assert torch.equal(out.detach(), expected)
        assert torch.isfinite(latent.grad).all() and latent.grad.abs().max() > 0


@pytest.fixture(scope="module")
def sd2_folder(tmp_path_factory):
    return save_diffusers_folder(tmp_path_factory.mktemp("sd2"), unet=TINY_SD2_UNET, vae=None, text_encoder=None,
                                 prediction_type="v_prediction", seed=1)


def test_sd2_style_unet_matches_diffusers(sd2_folder):
    cfg = weights.load_unet(sd2_folder).cfg
    assert (cfg.linear_proj, cfg.heads, cfg.prediction_type) == (True, (2, 4), "v_prediction")
    check_unet(sd2_folder)


# SD1.5's structure (down 1, mid 1, up 2 self-attention layers) and SDXL's (transformers of depth 2 and 3:
# down 2x2 + 2x3, mid 3, up 3x3 + 3x2)
KV_UNETS = {"sd15": ("tiny_sd_folder", 4), "sdxl": ("tiny_sdxl_unet_folder", 28)}


@pytest.fixture(scope="module", params=list(KV_UNETS))
def tiny_unet(request):
    folder, layers = KV_UNETS[request.param]
    unet = weights.load_unet(request.getfixturevalue(folder))
    assert unet.num_self_attention_layers == layers
    return unet


@torch.no_grad()
def test_kv_from_another_input_changes_the_output(tiny_unet):
    x, t, context = unet_inputs(tiny_unet.cfg)
    other, _, _ = unet_inputs(tiny_unet.cfg, seed=1)
    out = tiny_unet(x, t, context)
    _, other_kvs = tiny_unet.forward_recording_kv(other, t, context)
    assert (tiny_unet(x, t, context, kv=other_kvs) - out).abs().max() > 1e-2 * out.abs().max()


@torch.no_grad()
def test_every_self_attention_layer_uses_its_replayed_kv(tiny_unet):
    """Layer by layer: another input's K/V in that one slot (own K/V elsewhere) changes the output, so
    every layer index reaches its own self-attention layer (none is skipped or read twice)."""
    x, t, context = unet_inputs(tiny_unet.cfg, size=8)
    other, _, _ = unet_inputs(tiny_unet.cfg, size=8, seed=1)
    out, kvs = tiny_unet.forward_recording_kv(x, t, context)
    _, other_kvs = tiny_unet.forward_recording_kv(other, t, context)
    for i in range(len(kvs)):
        mixed = kvs[:i] + [other_kvs[i]] + kvs[i + 1:]
        assert not torch.allclose(tiny_unet(x, t, context, kv=mixed), out, atol=1e-6, rtol=0), f"layer {i}"


@torch.no_grad()
def test_fp16_runs_on_cpu_without_nans(tiny_sd_folder):
    unet = weights.load_unet(tiny_sd_folder, dtype=torch.float16)
    vae = weights.load_vae(tiny_sd_folder, dtype=torch.float16)
    assert next(unet.parameters()).dtype == next(vae.parameters()).dtype == torch.float16
    x, t, context = unet_inputs(unet.cfg)
    eps = unet(x.half(), t, context.half())
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = vae.encode(images.half())
    decoded = vae.decode(latents)
    for out in (eps, latents, decoded):
        assert out.dtype == torch.float16 and torch.isfinite(out).all()
    # and fp16 computes the same function, to half precision
    assert_close(eps, weights.load_unet(tiny_sd_folder)(x, t, context), rel=2e-2)


@pytest.mark.slow
def test_sd15_shapes_unet_matches_diffusers(sd15_folder):
    assert weights.load_unet(sd15_folder, device="meta").cfg == UNetConfig.sd15()
    check_unet(sd15_folder, size=32)


@pytest.mark.slow
def test_sd15_shapes_vae_matches_diffusers(sd15_folder):
    check_vae(sd15_folder, size=128)


@pytest.mark.slow
@torch.no_grad()
def test_sd15_has_16_self_attention_layers_and_replays(sd15_folder):
    unet = weights.load_unet(sd15_folder)
    x, t, context = unet_inputs(unet.cfg, size=16)
    _, kvs = unet.forward_recording_kv(x, t, context)
    assert len(kvs) == 16
    other = unet_inputs(unet.cfg, size=16, seed=1)[0]  # replay x's K/V while predicting for another latent
    torch.testing.assert_close(unet(other, t, context, kv=kvs), DiffusersUNet(unet)(other, t, context, kv=kvs),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg", [UNetConfig.tiny(), UNetConfig.tiny(block_channels=(32, 64, 64), heads=(2, 2, 2),
                                                                    attention_levels=(True, True, False))])
def test_self_attention_layer_names_follow_diffusers_module_paths(cfg):
    """Our names, in visiting order, against names read off diffusers' own modules (down_blocks.1.attentions.0...),
    in its forward's order (down, mid, up)."""
    ours = UNet(cfg)
    assert ours.self_attention_layer_names() == DiffusersUNet(ours).self_attention_layer_names()
    assert len(ours.self_attention_layer_names()) == ours.num_self_attention_layers
