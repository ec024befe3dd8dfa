"""The fast path changes speed, never results: compiled and half-precision edits against eager fp32.

These tests run on the CPU in the default suite, and on a GPU as scripts/gpu_check.py runs them
(REGIONDRAG_TEST_DEVICE=cuda): there the compiled path is inductor's with CUDA graphs, and the
denoising half is also checked to never wait for the GPU.
"""
import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import regiondrag.pipeline
from models import AutoencoderKL, UNet, UNetConfig, VAEConfig
from models.folding import FoldedUpsample
from models.onednn import PackedConv2d, packing_available
from models.unet import Upsample
from regiondrag.pipeline import RegionDragPipeline
from regiondrag.apps.region_file import regions_from_json
from regiondrag.image_io import load_image

from regiondrag.apps.baseline import DiffusersUNet, DiffusersVAE  # the benchmark's in-run baseline

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEVICE = torch.device(os.environ.get("REGIONDRAG_TEST_DEVICE", "cpu"))
# On a GPU the compiled path is inductor's, with CUDA graphs. On a CPU, where CUDA graphs do not exist and
# inductor's C++ build of the tiny models takes minutes, the same graphs run through aot_eager: traced,
# functionalised and run as ATen graphs, every break and recompile as inductor would see it.
BACKEND = "inductor" if DEVICE.type == "cuda" else "aot_eager"


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    unet, vae, context = UNet(UNetConfig.tiny()).eval(), AutoencoderKL(VAEConfig.tiny()).eval(), torch.randn(1, 77, 32)
    return unet.to(DEVICE), vae.to(DEVICE), context.to(DEVICE)


@pytest.fixture(scope="module")
def photo_and_regions():
    photo = load_image(EXAMPLES / "astronaut.png")
    return photo, regions_from_json(EXAMPLES / "astronaut.json", photo.size)


def edit(unet, vae, context, photo, regions, compiled=False, **kw):
    pipe = RegionDragPipeline(unet, vae, lambda prompt: context)
    if compiled:
        pipe.compile(mode="default", backend=BACKEND, cuda_graphs=True)
    return pipe, np.asarray(pipe.edit(photo, regions, max_side=64, progress=False, **kw).image, np.float32)


@pytest.mark.parametrize("pattern", ["record", "replay_all", "replay_some"])
def test_unet_traces_as_one_graph(models, pattern):
    """Attention control is plain arguments: dynamo sees one graph, no breaks, for each K/V pattern."""
    unet, _, context = models
    x, t = torch.randn(1, 4, 8, 8, device=DEVICE), torch.tensor(500, device=DEVICE)
    _, kvs = unet.forward_recording_kv(x, t, context)
    method, kwargs = {"record": (unet.forward_recording_kv, {}), "replay_all": (unet.forward, dict(kv=kvs)),
                      "replay_some": (unet.forward, dict(kv=[None] * 2 + kvs[2:]))}[pattern]
    explained = torch._dynamo.explain(method)(x, t, context, **kwargs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_reedit_path_compiles_once_without_breaks_and_gives_eagers_edit(models, photo_and_regions, monkeypatch):
    """compile(cuda_graphs=True): four graphs (UNet recording, UNet replaying, VAE encode, decode), each
    fullgraph (a break would raise), compiled by the first edit and by nothing after it: not a re-edit with
    other regions, not a new full edit (timesteps are device tensors, shapes fixed per photo size). fp32
    results are eager's: identical through aot_eager, within a rounding step of the 8-bit image through
    inductor."""
    unet, vae, context = models
    photo, regions = photo_and_regions
    eager = RegionDragPipeline(unet, vae, lambda prompt: context)
    expected = [eager.edit(photo, r, max_side=64, progress=False, return_intermediates=True, **kw)
                for r, kw in ((regions, {}), (regions[:1], {}), (regions, dict(seed=7)))]
    torch._dynamo.reset()
    counters.clear()
    pipe = RegionDragPipeline(copy.deepcopy(unet), copy.deepcopy(vae), lambda prompt: context)
    pipe.compile(mode="default", backend=BACKEND, cuda_graphs=True)
    got = [pipe.edit(photo, regions, max_side=64, progress=False, return_intermediates=True)]
    assert counters["stats"]["unique_graphs"] == 4
    got.append(pipe.edit(photo, regions[:1], max_side=64, progress=False, return_intermediates=True))  # re-edit
    assert pipe.cached_inversion() is got[0].inversion
    pipe.clear_cache()
    if DEVICE.type == "cuda":  # the third edit replays recorded CUDA graphs: its denoising loop may not sync
        real_denoise = regiondrag.pipeline.denoise

        def never_waiting(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return real_denoise(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        monkeypatch.setattr(regiondrag.pipeline, "denoise", never_waiting)
    got.append(pipe.edit(photo, regions, max_side=64, progress=False, return_intermediates=True, seed=7))
    assert counters["stats"]["unique_graphs"] == 4 and not counters["recompiles"]
    for e, g in zip(expected, got):
        a, b = np.asarray(e.image, np.int16), np.asarray(g.image, np.int16)
        if BACKEND == "aot_eager":
            assert torch.equal(e.denoising.latents[-1], g.denoising.latents[-1]) and np.array_equal(a, b)
        else:
            torch.testing.assert_close(g.denoising.latents[-1], e.denoising.latents[-1], atol=1e-3, rtol=0)
            assert np.abs(a - b).max() <= 1


# (on a GPU also the compiled fp16 path, CUDA graphs included, against eager fp32)
@pytest.mark.parametrize("dtype, compiled", [(torch.float16, False), (torch.bfloat16, False)] +
                         ([(torch.float16, True)] if DEVICE.type == "cuda" else []))
def test_half_precision_edit_is_as_close_to_fp32_as_diffusers_is(models, photo_and_regions, dtype, compiled):
    """fp16/bf16 lose precision only: our half-precision edit is no further from our fp32 edit than
    the same edit through diffusers' UNet and VAE (the benchmark's baseline, same weights) is from
    its own fp32 edit. The tolerance is the reference's error, not a band fitted to our output.
    (On a CPU with native bfloat16 this is the default edit: its VAE runs channels-last.)"""
    unet, vae, context = models
    half = lambda m: copy.deepcopy(m).to(dtype)
    torch._dynamo.reset()
    ours_error = (edit(half(unet), half(vae), context, *photo_and_regions, compiled=compiled)[1]
                  - edit(unet, vae, context, *photo_and_regions)[1])
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
    latent = torch.randn(1, 4, 8, 8, device=DEVICE)
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
        pipe.decode(torch.full((1, 4, 8, 8), float("nan"), device=DEVICE))


@pytest.mark.parametrize("dtype, bfloat16", [(torch.bfloat16, True), (torch.float32, False)])
def test_the_cpu_layouts_are_the_measured_ones(dtype, bfloat16):
    """On CPU in bfloat16 (measured faster, regiondrag/precision.py) the VAE runs channels-last, the UNet's
    convolutions have oneDNN-packed weights, which compile() gives back to inductor as plain convolutions, and the
    VAE decoder's upsamplers are folded; in float32 all stay as they are, so float32 edits keep their exact values."""
    torch.manual_seed(0)
    unet, vae = UNet(UNetConfig.tiny()).to(dtype), AutoencoderKL(VAEConfig.tiny()).to(dtype)
    pipe = RegionDragPipeline(unet, vae, lambda p: None)
    convs = [m.weight for m in vae.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) == bfloat16 for w in convs)
    assert all(w.is_contiguous() for w in unet.parameters())  # the UNet: contiguous (channels-last measured slower)
    packed = any(isinstance(m, PackedConv2d) for m in unet.modules())
    assert packed == (bfloat16 and packing_available())
    ups = [m for m in vae.decoder.modules() if isinstance(m, Upsample)]
    assert ups and all(isinstance(m, FoldedUpsample) == bfloat16 for m in ups)  # models/folding.py, bfloat16 only
    assert not any(isinstance(m, FoldedUpsample) for m in unet.modules())  # measured less accurate
    pipe.compile(backend="eager")
    assert not any(isinstance(m, PackedConv2d) for m in unet.modules())


def test_a_channels_last_vae_hands_the_unet_the_standard_layout(photo_and_regions):
    """The CPU's bfloat16 VAE is channels-last; the latent it encodes must not carry that layout into the
    UNet, which is measured slower channels-last: every UNet call of an edit gets a contiguous input."""
    torch.manual_seed(0)
    unet, vae = UNet(UNetConfig.tiny()).to(torch.bfloat16), AutoencoderKL(VAEConfig.tiny()).to(torch.bfloat16)
    context = torch.randn(1, 77, 32, dtype=torch.bfloat16)
    pipe = RegionDragPipeline(unet, vae, lambda prompt: context)
    assert next(p for p in vae.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    inputs = []
    unet.conv_in.register_forward_pre_hook(lambda module, args: inputs.append(args[0].is_contiguous()))
    pipe.edit(*photo_and_regions, max_side=64, progress=False)
    assert len(inputs) == 2 * len(pipe.config.timestep_grid().denoising) and all(inputs), inputs
