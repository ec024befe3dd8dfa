"""The fast path changes speed, never results: compiled and half-precision edits against eager fp32."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from models import AutoencoderKL, UNet, UNetConfig, VAEConfig
from regiondrag.pipeline import RegionDragPipeline
from regiondrag.apps.region_file import regions_from_json
from regiondrag.image_io import load_image

from regiondrag.apps.baseline import DiffusersUNet, DiffusersVAE  # the benchmark's in-run baseline

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return UNet(UNetConfig.tiny()).eval(), AutoencoderKL(VAEConfig.tiny()).eval(), torch.randn(1, 77, 32)


@pytest.fixture(scope="module")
def photo_and_regions():
    photo = load_image(EXAMPLES / "astronaut.png")
    return photo, regions_from_json(EXAMPLES / "astronaut.json", photo.size)


def edit(unet, vae, context, photo, regions, **kw):
    pipe = RegionDragPipeline(unet, vae, lambda prompt: context)
    return pipe, np.asarray(pipe.edit(photo, regions, max_side=64, progress=False, **kw).image, np.float32)


@pytest.mark.parametrize("pattern", ["record", "replay_all", "replay_some"])
def test_unet_traces_as_one_graph(models, pattern):
    """Attention control is plain arguments: dynamo sees one graph, no breaks, for each K/V pattern."""
    unet, _, context = models
    x, t = torch.randn(1, 4, 8, 8), torch.tensor(500)
    _, kvs = unet.forward_recording_kv(x, t, context)
    method, kwargs = {"record": (unet.forward_recording_kv, {}), "replay_all": (unet.forward, dict(kv=kvs)),
                      "replay_some": (unet.forward, dict(kv=[None] * 2 + kvs[2:]))}[pattern]
    explained = torch._dynamo.explain(method)(x, t, context, **kwargs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_compiled_edit_equals_eager_and_compiles_once(models, photo_and_regions):
    """A whole compiled edit gives eager's image and compiles each graph once: the UNet for
    recording and for replaying (timesteps are tensors, so steps share a graph), the VAE halves;
    a second edit compiles nothing."""
    unet, vae, context = models
    _, eager = edit(unet, vae, context, *photo_and_regions)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    pipe = RegionDragPipeline(copy.deepcopy(unet), copy.deepcopy(vae), lambda prompt: context)
    pipe.compile(backend=counting_backend)
    first = np.asarray(pipe.edit(*photo_and_regions, max_side=64, progress=False).image, np.float32)
    compiled_after_first = len(graphs)
    pipe.clear_cache()
    pipe.edit(*photo_and_regions, max_side=64, progress=False, seed=7)
    assert compiled_after_first == 4  # UNet record, UNet replay, VAE encode, VAE decode
    assert len(graphs) == compiled_after_first
    assert np.abs(first - eager).max() <= 1  # same maths; at most a rounding step of 8-bit output


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_edit_is_as_close_to_fp32_as_diffusers_is(models, photo_and_regions, dtype):
    """fp16/bf16 lose precision only: our half-precision edit is no further from our fp32 edit than
    the same edit through diffusers' UNet and VAE (the benchmark's baseline, same weights) is from
    its own fp32 edit. The tolerance is the reference's error, not a band fitted to our output."""
    unet, vae, context = models
    half = lambda m: copy.deepcopy(m).to(dtype)
    ours_error = edit(half(unet), half(vae), context, *photo_and_regions)[1] - edit(unet, vae, context,
                                                                                      *photo_and_regions)[1]
    ref32 = edit(DiffusersUNet(unet), DiffusersVAE(vae), context, *photo_and_regions)[1]
    ref_half = edit(DiffusersUNet(half(unet)), DiffusersVAE(half(vae)), context, *photo_and_regions)[1]
    assert np.isfinite(ref_half).all() and ref_half.std() > 1  # not NaN, not a flat (black) image
    ref_error = np.abs(ref_half - ref32)
    assert np.abs(ours_error).mean() <= 1.25 * ref_error.mean() + 0.05
    assert np.abs(ours_error).max() <= 1.25 * ref_error.max() + 1


def test_fp16_vae_overflow_is_recomputed_in_fp32(models):
    """The SD VAE can overflow fp16; the pipeline must notice and redo the half in fp32,
    not return NaNs or a black image."""
    unet, vae, context = models
    loud = copy.deepcopy(vae)
    with torch.no_grad():
        loud.decoder.conv_in.weight.mul_(1e5)  # activations past fp16's 65504, harmless in fp32
    latent = torch.randn(1, 4, 8, 8)
    expected = RegionDragPipeline(unet, loud, lambda p: context).decode(latent)
    pipe = RegionDragPipeline(copy.deepcopy(unet).half(), copy.deepcopy(loud).half(), lambda p: context)
    assert not torch.isfinite(pipe.vae.decode(latent.half() / pipe.vae.scaling_factor)).all()
    with pytest.warns(RuntimeWarning, match="overflowed in float16"):
        out = pipe.decode(latent.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=0)
    assert next(pipe.vae.parameters()).dtype == torch.float16  # put back after the fp32 redo


def test_nan_latent_is_reported_not_decoded(models):
    unet, vae, context = models
    pipe = RegionDragPipeline(unet, vae, lambda p: context)
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        pipe.decode(torch.full((1, 4, 8, 8), float("nan")))
