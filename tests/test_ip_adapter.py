"""IP-Adapter-Plus: parity with diffusers on one random checkpoint in the official layout,
the reference's 32-token layout, scale 0, loader errors, and the CLIP image encoder wrapper."""
import copy

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from models.attention import ImagePrompt
from models.image_encoder import ImageEncoder, clip_image_processor
from models.resampler import ResamplerConfig
from models.unet import UNet, UNetConfig
from regiondrag.image_prompt import ImagePrompter
from weights.errors import WeightsError, WeightsNotFoundError
from weights.files import read_state_dict
from weights.ip_adapter import cross_attention_paths, ip_adapter_files, load_image_encoder, load_ip_adapter

TINY_DIFFUSERS = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                      cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)
SD15_DIFFUSERS = dict(cross_attention_dim=768)  # UNet2DConditionModel's other defaults are SD1.5's
TINY_CLIP = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=32,
                 patch_size=8, projection_dim=16)
TOL = 1e-4


def official_state_dict(dunet: UNet2DConditionModel, r: ResamplerConfig, seed: int = 0) -> dict:
    """A random IP-Adapter-Plus checkpoint, keys and shapes written out as tencent-ailab/IP-Adapter saves
    them: image_proj.* (its Resampler), ip_adapter.{n}.to_{k,v}_ip.weight over diffusers' processors."""
    g = torch.Generator().manual_seed(seed)
    inner = r.heads * r.dim_head
    shapes = {"latents": (1, r.num_queries, r.dim), "proj_in.weight": (r.dim, r.embedding_dim),
              "proj_in.bias": (r.dim,), "proj_out.weight": (r.output_dim, r.dim), "proj_out.bias": (r.output_dim,),
              "norm_out.weight": (r.output_dim,), "norm_out.bias": (r.output_dim,)}
    for i in range(r.depth):
        for norm in ("0.norm1", "0.norm2", "1.0"):
            shapes |= {f"layers.{i}.{norm}.weight": (r.dim,), f"layers.{i}.{norm}.bias": (r.dim,)}
        shapes |= {f"layers.{i}.0.to_q.weight": (inner, r.dim), f"layers.{i}.0.to_kv.weight": (2 * inner, r.dim),
                   f"layers.{i}.0.to_out.weight": (r.dim, inner),
                   f"layers.{i}.1.1.weight": (r.dim * r.ff_mult, r.dim),
                   f"layers.{i}.1.3.weight": (r.dim, r.dim * r.ff_mult)}
    gains = ("norm1.weight", "norm2.weight", "norm_out.weight", ".1.0.weight")  # LayerNorm gains: around 1
    state = {f"image_proj.{k}": torch.randn(s, generator=g) * 0.3 + k.endswith(gains) for k, s in shapes.items()}
    for n, name in enumerate(dunet.attn_processors):
        if name.endswith("attn2.processor"):
            attn = dunet.get_submodule(name.removesuffix(".processor"))
            for kv in ("k", "v"):
                shape = (attn.to_k.out_features, attn.to_k.in_features)
                state[f"ip_adapter.{n}.to_{kv}_ip.weight"] = torch.randn(shape, generator=g) * 0.3
    return state


def nested(state: dict) -> dict:
    """Flat official keys -> the official .bin's {"image_proj": {...}, "ip_adapter": {...}}."""
    return {group: {k.removeprefix(group + "."): v for k, v in state.items() if k.startswith(group + ".")}
            for group in ("image_proj", "ip_adapter")}


def load_into_diffusers(dunet: UNet2DConditionModel, state: dict, scale: float) -> None:
    dunet._load_ip_adapter_weights([nested(state)], low_cpu_mem_usage=False)
    for proc in dunet.attn_processors.values():
        if isinstance(proc, IPAdapterAttnProcessor2_0):
            proc.scale = [scale]


@pytest.fixture(scope="module")
def tiny():
    """Our tiny UNet and diffusers' twin with the same weights, before any adapter is loaded."""
    torch.manual_seed(0)
    dunet = UNet2DConditionModel(**TINY_DIFFUSERS).eval()
    unet = UNet(UNetConfig.tiny()).eval()
    unet.load_state_dict(dunet.state_dict())
    return unet, dunet


@pytest.fixture(scope="module")
def loaded(tiny, tmp_path_factory):
    """Both UNets with one official-layout checkpoint loaded (ours from a .safetensors file) at scale 0.5."""
    unet, dunet = tiny
    dunet_ip = UNet2DConditionModel(**TINY_DIFFUSERS).eval()
    dunet_ip.load_state_dict(dunet.state_dict())
    state = official_state_dict(dunet_ip, ResamplerConfig.tiny())
    path = tmp_path_factory.mktemp("ip") / "ip-adapter-plus.safetensors"
    save_file(state, path)
    unet_ip = UNet(UNetConfig.tiny()).eval()
    unet_ip.load_state_dict(unet.state_dict())
    resampler = load_ip_adapter(path, unet_ip, ResamplerConfig.tiny()).eval()
    load_into_diffusers(dunet_ip, state, 0.5)
    return unet_ip, resampler, dunet_ip, state


def tiny_clip(folder=None) -> CLIPVisionModelWithProjection:
    torch.manual_seed(1)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)).eval()
    if folder is not None:
        model.save_pretrained(folder)
    return model


def load_clip() -> ImageEncoder:
    return ImageEncoder(tiny_clip(), clip_image_processor(TINY_CLIP["image_size"]))


def photo(h=40, w=50, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def inputs(batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 16, 16, generator=g), torch.randn(batch, 7, 32, generator=g),
            torch.randn(batch, 17, ResamplerConfig.tiny().embedding_dim, generator=g))


# -- parity with diffusers ------------------------------------------------------------------

def test_resampler_matches_diffusers(loaded):
    _, resampler, dunet, _ = loaded
    features = inputs(batch=3)[2]
    with torch.no_grad():
        ours = resampler(features)
        ref = dunet.encoder_hid_proj.image_projection_layers[0](features)
    assert ours.shape == (3, ResamplerConfig.tiny().num_queries, 32)
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


def test_unet_with_image_tokens_matches_diffusers(loaded):
    unet, resampler, dunet, _ = loaded
    x, context, features = inputs(batch=2)
    with torch.no_grad():
        ours = unet(x, 601, context, image_prompt=ImagePrompt(resampler(features), 0.5))
        ref = dunet(x, 601, encoder_hidden_states=context,
                    added_cond_kwargs={"image_embeds": [features[:, None]]}).sample  # one image per sample
        plain = unet(x, 601, context)
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)
    assert (ours - plain).abs().max() > 100 * TOL  # the image branch does contribute


def test_adapter_key_order_is_diffusers_processor_order():
    """ip_adapter.{n}: n counts diffusers' attn_processors (down, up, then mid), cross-attention odd."""
    with torch.device("meta"):
        names = list(UNet2DConditionModel(**SD15_DIFFUSERS).attn_processors)
        ours = cross_attention_paths(UNet(UNetConfig.sd15()))
    assert len(ours) == 16
    assert [f"{p}.processor" for p in ours] == [names[2 * k + 1] for k in range(16)]
    assert ours[-1].startswith("mid_block")  # ip_adapter.31 is the mid block's


def test_scale_zero_is_the_plain_unet_exactly(tiny, loaded):
    plain_unet, _ = tiny
    unet, _, _, _ = loaded
    x, context, _ = inputs()
    nan_tokens = torch.full((1, 32, 32), float("nan"))  # any use of the image branch would show
    with torch.no_grad():
        ours = unet(x, 601, context, image_prompt=ImagePrompt(nan_tokens, 0.0))
        assert torch.equal(ours, plain_unet(x, 601, context))


def test_reference_layout_matches_diffusers_fed_like_the_reference(loaded):
    """The reference passes [stack(zero-image features, photo features)] = (2, 1, N, D) at latent batch 1
    (utils/drag.py ip_encode_image); ours: 32 tokens at batch 1."""
    unet, resampler, dunet, _ = loaded
    prompter = ImagePrompter(load_clip(), resampler)
    x, context, _ = inputs()
    with torch.no_grad():
        image_prompt = prompter(photo())
        pixels = prompter.encoder.preprocess(photo())
        clip = prompter.encoder.model
        real = clip(pixels, output_hidden_states=True).hidden_states[-2]
        zero = clip(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        ref = dunet(x, 601, encoder_hidden_states=context,
                    added_cond_kwargs={"image_embeds": [torch.stack([zero, real])]}).sample
        ours = unet(x, 601, context, image_prompt=image_prompt)
        photo_only = ImagePrompter(prompter.encoder, resampler, reference_layout=False)(photo())
        plain = unet(x, 601, context, image_prompt=photo_only)
    assert image_prompt.tokens.shape == (1, 2 * ResamplerConfig.tiny().num_queries, 32)
    assert image_prompt.scale == 0.5
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)
    assert (ours - plain).abs().max() > 100 * TOL  # the zero image's tokens matter


# -- loader ---------------------------------------------------------------------------------

def test_bin_and_safetensors_read_the_same(loaded, tmp_path):
    _, _, _, state = loaded
    torch.save(nested(state), tmp_path / "a.bin")
    save_file(state, tmp_path / "a.safetensors")
    a, b = read_state_dict(tmp_path / "a.bin"), read_state_dict(tmp_path / "a.safetensors")
    assert a.keys() == b.keys() == state.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_from_pretrained_reads_the_h94_layout(tiny, loaded, tmp_path):
    """A folder laid out like h94/IP-Adapter: models/ip-adapter-plus_sd15.safetensors, models/image_encoder/."""
    plain_unet, _ = tiny
    unet_ip, resampler, _, state = loaded
    (tmp_path / "models").mkdir()
    save_file(state, tmp_path / "models" / "ip-adapter-plus_sd15.safetensors")
    tiny_clip(tmp_path / "models" / "image_encoder")
    unet = UNet(UNetConfig.tiny()).eval()
    unet.load_state_dict(plain_unet.state_dict())
    prompter = ImagePrompter.from_pretrained(unet, tmp_path)  # the resampler's config read from the file
    assert prompter.resampler.cfg == ResamplerConfig.tiny()
    assert torch.equal(prompter.tokens(photo()), ImagePrompter(load_clip(), resampler).tokens(photo()))
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), unet_ip.state_dict().values()))


def test_missing_adapter_file_is_a_clear_error(tmp_path):
    path = tmp_path / "ip-adapter-plus_sd15.safetensors"
    with pytest.raises(WeightsNotFoundError, match="ip-adapter-plus_sd15.safetensors"):
        load_ip_adapter(path, UNet(UNetConfig.tiny()), ResamplerConfig.tiny())
    with pytest.raises(WeightsNotFoundError, match="image_encoder"):
        ip_adapter_files(tmp_path)
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        load_image_encoder(tmp_path)


def test_hub_id_not_cached_offline_is_a_clear_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("REGIONDRAG_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError, match="h94/IP-Adapter.*ip-adapter-plus_sd15.safetensors.*weights cache"):
        ip_adapter_files("h94/IP-Adapter")


def test_unreadable_adapter_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.bin"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="broken.bin"):
        read_state_dict(path)


def test_wrong_keys_are_named(loaded, tmp_path):
    _, _, _, state = loaded
    wrong = dict(state)
    del wrong["ip_adapter.1.to_v_ip.weight"]
    wrong["ip_adapter.2.to_k_ip.weight"] = state["ip_adapter.1.to_k_ip.weight"].clone()  # a self-attention index
    path = tmp_path / "wrong.safetensors"
    save_file(wrong, path)
    with pytest.raises(WeightsError, match=r"wrong\.safetensors.*ip_adapter\.1\.to_v_ip.*ip_adapter\.2\.to_k_ip"):
        load_ip_adapter(path, UNet(UNetConfig.tiny()), ResamplerConfig.tiny())


def test_plain_ip_adapter_without_config_is_a_clear_error(tmp_path):
    path = tmp_path / "ip-adapter_sd15.safetensors"
    save_file({"image_proj.proj.weight": torch.zeros(4, 4)}, path)  # plain IP-Adapter: no Resampler
    with pytest.raises(WeightsError, match=r"ip-adapter_sd15\.safetensors is not an IP-Adapter-Plus.*image_proj\.proj"):
        load_ip_adapter(path, UNet(UNetConfig.tiny()))


def test_wrong_shapes_are_named(loaded, tmp_path):
    _, _, _, state = loaded
    path = tmp_path / "other.safetensors"
    save_file(state, path)
    with pytest.raises(WeightsError, match=r"other\.safetensors.*image_proj\.latents"):
        load_ip_adapter(path, UNet(UNetConfig.tiny()), ResamplerConfig.tiny(num_queries=8))


# -- image encoder --------------------------------------------------------------------------

def test_image_encoder_returns_penultimate_hidden_states_of_the_processed_image(tmp_path):
    reference = tiny_clip(tmp_path)
    encoder = load_image_encoder(tmp_path)
    image = photo(40, 50)
    pixels = encoder.preprocess(image)

    # CLIP preprocessing by hand: short side to 32 (bicubic), centre crop 32x32, [0, 1], CLIP mean/std
    resized = np.asarray(Image.fromarray(image).resize((40, 32), Image.BICUBIC), dtype=np.float32)[:, 4:36] / 255
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    expected = torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1)[None]).float()
    torch.testing.assert_close(pixels, expected, atol=1e-5, rtol=0)

    features = encoder(pixels)
    hidden = reference(pixels, output_hidden_states=True).hidden_states
    assert features.shape == (1, 1 + (32 // 8) ** 2, TINY_CLIP["hidden_size"])
    torch.testing.assert_close(features, hidden[-2], atol=0, rtol=0)
    assert not torch.allclose(features, hidden[-1])


# -- SD1.5 shapes -----------------------------------------------------------------------------

def fill_random(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights without allocating them: every parameter becomes a view of one random pool at a
    random offset (SD1.5's 860M fresh draws take ~10 s on a CPU). One small scale suits every layer
    (fan-ins run 320..23040, and the norms rescale what grows); norm gains stay around 1."""
    g = torch.Generator().manual_seed(seed)
    pool = (torch.rand(1 << 25, generator=g) * 2 - 1) * 0.02  # longer than the largest tensor (29.5M)
    gains = 1 + pool[:1 << 16] * 10
    for name, p in module.named_parameters():
        source = gains if "norm" in name and name.endswith("weight") else pool
        start = int(torch.randint(0, source.numel() - p.numel() + 1, (1,), generator=g))
        p.data = source[start:start + p.numel()].view_as(p)


@pytest.mark.slow
def test_sd15_reference_layout_matches_diffusers(tmp_path):
    """One UNet call at a 32x32 latent: SD1.5 UNet, ip-adapter-plus_sd15-shaped resampler, a ViT-H-wide
    (2-layer) image encoder at 224 px, the reference's 32 tokens at scale 0.5."""
    with torch.device("meta"):
        dunet, unet = UNet2DConditionModel(**SD15_DIFFUSERS), UNet(UNetConfig.sd15())
    dunet = dunet.to_empty(device="cpu").eval()
    fill_random(dunet)
    unet.load_state_dict(dunet.state_dict(), assign=True)  # shares the tensors
    state = official_state_dict(dunet, ResamplerConfig.sd15())
    save_file(state, tmp_path / "ip-adapter-plus_sd15.safetensors")
    resampler = load_ip_adapter(tmp_path / "ip-adapter-plus_sd15.safetensors", unet).eval()
    load_into_diffusers(dunet, state, 0.5)
    torch.manual_seed(2)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=2,
                                                          num_attention_heads=16, image_size=224, patch_size=14,
                                                          projection_dim=1024)).eval()
    prompter = ImagePrompter(ImageEncoder(clip, clip_image_processor(224)), resampler)
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        image_prompt = prompter(photo(300, 400))
        pixels = prompter.encoder.preprocess(photo(300, 400))
        real, zero = (clip(p, output_hidden_states=True).hidden_states[-2] for p in (pixels, torch.zeros_like(pixels)))
        ref = dunet(x, 549, encoder_hidden_states=context,
                    added_cond_kwargs={"image_embeds": [torch.stack([zero, real])]}).sample
        ours = unet(x, 549, context, image_prompt=image_prompt)
    assert real.shape == (1, 257, 1280) and image_prompt.tokens.shape == (1, 32, 768)
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


def test_pipeline_conditions_every_unet_call_on_the_photo_and_skips_it_at_scale_0(loaded):
    """ip_scale > 0: each of the 20 UNet calls gets the photo's tokens at that scale;
    ip_scale = 0: the image encoder is never run and no call gets image tokens."""
    from models import AutoencoderKL, VAEConfig
    from regiondrag.pipeline import RegionDragPipeline

    unet_ip, resampler, _, _ = loaded
    prompter = ImagePrompter(load_clip(), resampler)
    encodes, seen = [], []
    prompter.encoder.register_forward_hook(lambda *a: encodes.append(1))
    unet = copy.deepcopy(unet_ip)
    for name in ("forward", "forward_recording_kv"):  # the denoising calls, the recording (inversion) calls
        method = getattr(unet, name)
        setattr(unet, name, lambda *a, method=method, **kw: (seen.append(kw.get("image_prompt")), method(*a, **kw))[1])
    context = torch.randn(1, 77, 32)
    pipe = RegionDragPipeline(unet, AutoencoderKL(VAEConfig.tiny()).eval(), lambda p: context, prompter)
    mapping = (np.array([[1, 1]]), np.array([[3, 2]]))
    pipe.edit(photo(64, 64), mapping=mapping, ip_scale=0.3, progress=False, max_side=64)
    expected = prompter.tokens(photo(64, 64))
    assert len(seen) == 20 and all(p is not None and p.scale == 0.3 and torch.equal(p.tokens, expected) for p in seen)
    seen.clear(), encodes.clear()
    pipe.edit(photo(64, 64), mapping=mapping, ip_scale=0.0, progress=False, max_side=64)
    assert len(seen) == 20 and all(p is None for p in seen) and not encodes
