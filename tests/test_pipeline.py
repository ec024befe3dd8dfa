"""The RegionDrag pipeline on tiny random-weight models, observed from outside.

What the UNet receives is recorded by wrapping `unet.forward` (the pipeline calls the module,
so every call goes through the wrapper), not assumed from the code: the latent it is given
(after copy-paste and the editable-mask blend), its timestep, the K/V it is told to use, and
the K/V it reported while inverting.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from models import UNet
from regiondrag.attention_swap import AttentionSwap
from regiondrag.copy_paste import PASTE_SCHEDULES, add_handle_noise, paste, paste_steps
from regiondrag.image_io import ImageError
from regiondrag.mapping import editable_mask_to_latent
from regiondrag.pipeline import GRIDS, RegionDragPipeline
from regiondrag.apps.region_file import regions_from_json
from regiondrag.regions import RegionError
from sampling import alpha_bar, ddim_step

W, H = 64, 48            # the photo; its latent is 8 x 6
STEPS, START_T = 20, 0.5
N = int(STEPS * START_T)  # inversion steps = denoising steps
FAST = dict(steps=STEPS, start_t=START_T, max_side=None, progress=False)


@pytest.fixture
def pipe(models):
    """A fresh pipeline (empty inversion cache) over the shared tiny models."""
    return new_pipe(models)


def new_pipe(models) -> RegionDragPipeline:
    unet, vae, context = models
    return RegionDragPipeline(unet, vae, lambda prompt: context)


def make_photo(w: int = W, h: int = H, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs plus texture: every 8x8 cell differs from its neighbours."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), np.int16)
    return np.clip(smooth + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


PHOTO = make_photo()


def block(x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    """Latent (x, y) positions of the block x0 <= x < x1, y0 <= y < y1."""
    return np.stack(np.meshgrid(np.arange(x0, x1), np.arange(y0, y1)), -1).reshape(-1, 2)


HANDLE = block(1, 4, 1, 4)
SHIFT = (HANDLE, HANDLE + [4, 0])  # a 3x3 latent block moved 4 cells right (no overlap)


class UNetRecorder:
    """Replaces unet.forward and unet.forward_recording_kv for the duration of a `with`: calls the
    real ones and keeps, per call, the latent input (a copy), timestep, the kv argument as given,
    whether K/V were recorded (return_kv), the reported K/V and the prediction."""

    def __init__(self, unet: UNet):
        self.unet, self.calls = unet, []

    def __enter__(self) -> "UNetRecorder":
        real, recording = self.unet.forward, self.unet.forward_recording_kv

        def forward(x, t, context, *, kv=None, **kwargs):
            pred = real(x, t, context, kv=kv, **kwargs)
            self._keep(x, t, kv, False, None, pred)
            return pred

        def forward_recording_kv(x, t, context, **kwargs):
            pred, kv_out = recording(x, t, context, **kwargs)
            self._keep(x, t, None, True, kv_out, pred)
            return pred, kv_out

        self.unet.forward, self.unet.forward_recording_kv = forward, forward_recording_kv
        return self

    def __exit__(self, *exc) -> None:
        del self.unet.forward, self.unet.forward_recording_kv  # back to the class's methods

    def _keep(self, x, t, kv, return_kv, kv_out, pred) -> None:
        self.calls.append(SimpleNamespace(x=x.clone(), t=int(t), kv=kv, return_kv=return_kv, kv_out=kv_out,
                                          pred=pred.clone()))

    @property
    def recording(self) -> list:
        return [c for c in self.calls if c.return_kv]

    def denoising(self, n: int = N) -> list:
        return self.calls[-n:]  # the denoising loop's calls come last


def at(latent: torch.Tensor, xy: np.ndarray) -> torch.Tensor:
    """latent[:, :, y, x] for every (x, y)."""
    return latent[:, :, xy[:, 1], xy[:, 0]]


# -- (1) a no-op edit reconstructs its input ----------------------------------------------------

def test_zero_handle_noise_and_identity_paste_are_identities():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 6, 8, generator=g)
    xy = torch.as_tensor(block(0, 8, 0, 6))
    assert torch.equal(add_handle_noise(x, xy, 0.0, g), x)
    assert torch.equal(paste(x, x, xy, xy), x)
    noised = add_handle_noise(x, xy[:5], 1.0, g)  # s = 1: pure noise at the handle, nothing else moves
    assert torch.equal(noised.flatten(2)[..., 5:], x.flatten(2)[..., 5:])
    assert not torch.isclose(noised.flatten(2)[..., :5], x.flatten(2)[..., :5]).any()


IDENTITY = (block(2, 6, 1, 5), block(2, 6, 1, 5))
NO_PAIRS = (np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64))
SAME_POINT = {"pairs": [{"kind": "points", "handle": [[30, 22]], "target": [[30, 22]], "radius": 12}]}


@pytest.mark.parametrize("inputs, noise_scale", [
    (dict(mapping=IDENTITY), 0.0),
    (dict(mapping=NO_PAIRS), 1.0),          # nothing to noise, nothing to paste
    (dict(regions=SAME_POINT), 0.0),        # the same, through the region file format
], ids=["handle_is_target", "no_pairs", "region_file_handle_is_target"])
def test_no_op_edit_reconstructs_the_encoded_latent(pipe, inputs, noise_scale):
    """Cycle-SDE (encode then CP) on the consistent grid retraces its inversion: with nothing
    moved, the final denoised latent is the encoded photo's (attention swap on, as by default)."""
    if "regions" in inputs:
        inputs = dict(regions=regions_from_json(inputs["regions"], (W, H)))
    result = pipe.edit(PHOTO, **inputs, method="encode_then_cp", grid="consistent", noise_scale=noise_scale,
                       return_intermediates=True, **FAST)
    if "regions" in inputs:
        assert len(result.mapping[0]) > 1 and np.array_equal(*result.mapping)
    encoded, final = result.inversion.latents[0], result.denoising.latents[-1]
    assert encoded.abs().mean() > 0.05  # a real latent, not zeros
    assert (final - encoded).abs().max() <= 1e-4


def test_reference_grid_does_not_reconstruct(pipe):
    """The reference's 549/550 mismatch (DESIGN.md): the same no-op edit on its grid does not
    come back exactly, which is why the test above needs the consistent grid."""
    result = pipe.edit(PHOTO, mapping=IDENTITY, noise_scale=0.0, grid="reference", return_intermediates=True,
                       **FAST)
    assert (result.denoising.latents[-1] - result.inversion.latents[0]).abs().max() > 1e-3


# -- (2) copy-paste before every UNet call --------------------------------------------------------

@pytest.mark.parametrize("schedule", PASTE_SCHEDULES)
@pytest.mark.parametrize("grid", list(GRIDS))
def test_target_holds_the_stored_handle_latent_before_each_pasting_call(pipe, schedule, grid):
    """Encode then CP: before denoising UNet call j, the latent at the target positions is the
    inversion latent of that noise level (inversion step n-j) at the handle positions."""
    handle, target = SHIFT
    with UNetRecorder(pipe.unet) as rec:
        result = pipe.edit(PHOTO, mapping=SHIFT, paste_schedule=schedule, grid=grid, return_intermediates=True,
                           **FAST)
    hooks, calls = result.inversion.latents, rec.denoising()
    assert len(rec.calls) == 2 * N and len(rec.recording) == N and not any(c.return_kv for c in calls)
    denoising = GRIDS[grid](STEPS, START_T).denoising
    assert [c.t for c in calls] == [t for t, _ in denoising]
    pastes = paste_steps([t for t, _ in denoising], schedule)
    assert pastes[0] and (all(pastes) or not all(pastes[1:]))  # the schedule pastes at least once, and
    for j, call in enumerate(calls):                            # non-pasting steps exist unless every_step
        stored = hooks[N - j]
        if pastes[j]:
            assert torch.equal(at(call.x, target), at(stored, handle)), f"step {j}"
        else:
            assert not torch.allclose(at(call.x, target), at(stored, handle), atol=1e-3), f"step {j} pasted"


def test_first_call_sees_noised_handles_and_the_stored_latent_elsewhere(pipe):
    handle, target = SHIFT
    with UNetRecorder(pipe.unet) as rec:
        result = pipe.edit(PHOTO, mapping=SHIFT, noise_scale=1.0, return_intermediates=True, **FAST)
    x0, start = rec.denoising()[0].x, result.inversion.latents[N]
    moved = np.zeros((H // 8, W // 8), bool)
    moved[handle[:, 1], handle[:, 0]] = moved[target[:, 1], target[:, 0]] = True
    untouched = block(0, W // 8, 0, H // 8)[~moved.ravel()]
    assert torch.equal(at(x0, untouched), at(start, untouched))
    assert not torch.isclose(at(x0, handle), at(start, handle)).any()  # s = 1: pure noise


def test_cp_then_encode_pastes_the_previews_inversion_at_the_target(pipe):
    """CP then Encode: the pasted latents come from the DDIM inversion of the copy-pasted
    preview, taken at the target (where the preview already holds the handle's pixels)."""
    _, target = SHIFT
    with UNetRecorder(pipe.unet) as rec:
        result = pipe.edit(PHOTO, mapping=SHIFT, method="cp_then_encode", return_intermediates=True, **FAST)
    assert len(rec.calls) == 3 * N  # record the photo, invert the preview, denoise
    preview_calls, calls = rec.calls[N:2 * N], rec.denoising()
    assert not any(c.return_kv or c.kv is not None for c in preview_calls)
    # DDIM inversion evaluates the model at x_t: its inputs are the preview's latents 0 ... n-1,
    # and the last one is one DDIM step further
    hooks = [c.x for c in preview_calls]
    t, t_next = GRIDS["reference"](STEPS, START_T).inversion[-1]
    alphas = pipe.alphas_cumprod
    hooks.append(ddim_step(hooks[-1], preview_calls[-1].pred, alpha_bar(alphas, t), alpha_bar(alphas, t_next)))
    for j, call in enumerate(calls):
        assert torch.allclose(at(call.x, target), at(hooks[N - j], target), atol=1e-6, rtol=0), f"step {j}"
    # and they are not the photo's own inversion latents there
    assert not torch.allclose(at(calls[1].x, target), at(result.inversion.latents[N - 1], target), atol=1e-3)


# -- (3) the editable mask ------------------------------------------------------------------------

def test_outside_the_editable_mask_every_call_sees_the_stored_latent(pipe):
    """Outside the mask the latent given to every denoising call, the last one included, is the
    stored inversion latent of that step. (The last call's *output* is decoded as in the
    reference; the photo's pixels outside the mask are restored in pixel space, tested below.)"""
    mask = np.zeros((H, W), bool)
    mask[:, :40] = True  # latent columns 0 ... 4 editable
    mapping = (block(0, 2, 1, 4), block(2, 4, 1, 4))
    with UNetRecorder(pipe.unet) as rec:
        result = pipe.edit(PHOTO, mapping=mapping, mask=mask, return_intermediates=True, **FAST)
    editable = torch.from_numpy(editable_mask_to_latent(mask, (W // 8, H // 8)))
    assert editable[:, :5].all() and not editable[:, 5:].any()
    for j, call in enumerate(rec.denoising()):
        stored = result.inversion.latents[N - j]
        assert torch.equal(call.x[..., ~editable], stored[..., ~editable]), f"step {j}"
        if j:
            assert not torch.allclose(call.x[..., editable], stored[..., editable], atol=1e-3)
    out = np.asarray(result.image)
    assert np.array_equal(out[~mask], PHOTO[~mask])
    assert not np.array_equal(out[mask], PHOTO[mask])


def test_editable_mask_keeps_original_pixels_exactly_at_an_odd_size(pipe):
    photo = make_photo(61, 45, seed=1)
    mask = np.zeros((45, 61), bool)
    mask[5:40, 3:35] = True
    regions = regions_from_json({"pairs": [{"kind": "points", "handle": [[12, 20]], "target": [[24, 22]],
                                            "radius": 8}]}, (61, 45))
    result = pipe.edit(photo, regions, mask=mask, **dict(FAST, max_side=64))
    out = np.asarray(result.image)
    assert out.shape == photo.shape
    assert np.array_equal(out[~mask], photo[~mask])
    assert np.abs(out[mask].astype(int) - photo[mask]).mean() > 1  # the inside was regenerated


def test_mask_of_the_wrong_size_is_refused(pipe):
    with pytest.raises(RegionError, match="editable mask is 32x48 but the photo is 64x48"):
        pipe.edit(PHOTO, mapping=SHIFT, mask=np.ones((48, 32), bool), **FAST)


# -- (4) attention swap ---------------------------------------------------------------------------

def test_each_denoising_call_replays_the_kv_of_inversion_step_n_minus_1_minus_j(pipe):
    with UNetRecorder(pipe.unet) as rec:
        result = pipe.edit(PHOTO, mapping=SHIFT, return_intermediates=True, **FAST)
    layers = pipe.unet.num_self_attention_layers
    recorded = [c.kv_out for c in rec.recording]
    assert len(recorded) == N and layers == 4 and all(len(kvs) == layers for kvs in recorded)
    store = result.inversion.kv
    for i, kvs in enumerate(recorded):  # the store holds exactly what the UNet reported, step by step
        for layer, (k, v) in enumerate(kvs):
            sk, sv = store.get(i, layer)
            assert sk.data_ptr() == k.data_ptr() and torch.equal(sk, k)
            assert sv.data_ptr() == v.data_ptr() and torch.equal(sv, v)
    assert not torch.equal(recorded[0][0][0], recorded[1][0][0])  # steps' K/V differ: the match below means something
    for j, call in enumerate(rec.denoising()):
        assert call.kv is not None and len(call.kv) == layers, f"step {j}"
        for layer, (k, v) in enumerate(call.kv):
            rk, rv = recorded[N - 1 - j][layer]
            assert k.data_ptr() == rk.data_ptr() and torch.equal(k, rk), f"step {j} layer {layer}"
            assert v.data_ptr() == rv.data_ptr() and torch.equal(v, rv), f"step {j} layer {layer}"


@pytest.mark.parametrize("swap, expect", [
    (AttentionSwap(enabled=False), lambda j, layer: False),
    (AttentionSwap(layers=frozenset({0, 2})), lambda j, layer: layer in (0, 2)),
    (AttentionSwap(steps=frozenset({1, 4})), lambda j, layer: j in (1, 4)),
    (AttentionSwap(layers=frozenset({3}), steps=frozenset({0})), lambda j, layer: (j, layer) == (0, 3)),
], ids=["disabled", "layers", "steps", "layers_and_steps"])
def test_attention_swap_selections(pipe, swap, expect):
    """Unselected layers get None; a step with no selected layer gets kv=None (plain attention)."""
    with UNetRecorder(pipe.unet) as rec:
        result = pipe.edit(PHOTO, mapping=SHIFT, attention_swap=swap, return_intermediates=True, **FAST)
    layers = pipe.unet.num_self_attention_layers
    for j, call in enumerate(rec.denoising()):
        if not any(expect(j, layer) for layer in range(layers)):
            assert call.kv is None, f"step {j}"
            continue
        for layer in range(layers):
            if expect(j, layer):
                for given, stored in zip(call.kv[layer], result.inversion.kv.get(N - 1 - j, layer)):
                    assert given.data_ptr() == stored.data_ptr() and torch.equal(given, stored), (j, layer)
            else:
                assert call.kv[layer] is None, (j, layer)


def test_attention_swap_changes_the_edit(models):
    """The replayed K/V are consumed: swapping on and off give different latents."""
    on = new_pipe(models).edit(PHOTO, mapping=SHIFT, return_intermediates=True, **FAST)
    off = new_pipe(models).edit(PHOTO, mapping=SHIFT, attention_swap=AttentionSwap(enabled=False),
                                return_intermediates=True, **FAST)
    assert not torch.allclose(on.denoising.latents[-1], off.denoising.latents[-1], atol=1e-4)


# -- (5) seeds and the re-edit cache ----------------------------------------------------------------

@pytest.mark.parametrize("method", ["encode_then_cp", "cp_then_encode"])
def test_same_seed_same_edit_other_seed_other_edit(models, method):
    def run(seed):
        r = new_pipe(models).edit(PHOTO, mapping=SHIFT, method=method, seed=seed, return_intermediates=True,
                                  **FAST)
        return np.asarray(r.image), r.denoising.latents[-1]

    a, b, c = run(3), run(3), run(4)
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[1], c[1], atol=1e-4) and not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("method", ["encode_then_cp", "cp_then_encode"])
def test_re_edit_of_the_cached_inversion_equals_a_fresh_edit(models, method):
    """Edit, then edit again with other regions: the second edit reuses the inversion (no
    recording UNet call) and is bit-identical to the same edit on a fresh pipeline."""
    other = (block(4, 6, 2, 5), block(1, 3, 1, 4))
    first = new_pipe(models)
    a0 = first.edit(PHOTO, mapping=SHIFT, method=method, **FAST)
    with UNetRecorder(first.unet) as rec:
        a = first.edit(PHOTO, mapping=other, method=method, return_intermediates=True, **FAST)
    assert not rec.recording  # served from the cache
    b = new_pipe(models).edit(PHOTO, mapping=other, method=method, return_intermediates=True, **FAST)
    assert all(torch.equal(x, y) for x, y in zip(a.denoising.latents, b.denoising.latents))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a0.image), np.asarray(a.image))  # the regions did matter
    # and the cached inversion was not changed by the edits that used it
    assert all(torch.equal(x, y) for x, y in zip(a.inversion.latents, b.inversion.latents))


def test_cache_is_invalidated_by_other_settings(pipe):
    pipe.edit(PHOTO, mapping=SHIFT, **FAST)
    first = pipe.cached_inversion()
    pipe.edit(PHOTO, mapping=SHIFT, **FAST)
    assert pipe.cached_inversion() is first
    pipe.edit(PHOTO, mapping=SHIFT, seed=1, **FAST)
    assert pipe.cached_inversion() is not first
    pipe.edit(make_photo(seed=5), mapping=SHIFT, seed=1, **FAST)
    assert not torch.equal(pipe.cached_inversion().latents[0], first.latents[0])


def test_the_inversion_reports_each_step_as_it_finishes(pipe):
    config = pipe.config.replace(steps=STEPS, start_t=START_T, max_side=None)
    steps = []
    pipe.invert(Image.fromarray(PHOTO), "", config, progress=False, on_step=lambda i, n: steps.append((i, n)))
    assert steps == [(i, N) for i in range(1, N + 1)]
    pipe.invert(Image.fromarray(PHOTO), "", config, progress=False, on_step=lambda i, n: steps.append((i, n)))
    assert len(steps) == N  # a cached inversion runs no step


# -- the rest of the surface ----------------------------------------------------------------------

def test_cp_then_encode_preview_differs_from_the_photo_at_the_target(pipe):
    regions = regions_from_json({"pairs": [{"kind": "points", "handle": [[16, 16]], "target": [[44, 28]],
                                            "radius": 6, "shape": "square"}]}, (W, H))
    result = pipe.edit(PHOTO, regions, method="cp_then_encode", **FAST)
    preview = np.asarray(result.preview)
    assert preview.shape == PHOTO.shape
    # the target square now shows the handle square's pixels; everything else is the photo
    assert np.array_equal(preview[22:35, 38:51], PHOTO[10:23, 10:23])
    assert not np.array_equal(preview[22:35, 38:51], PHOTO[22:35, 38:51])
    changed = (preview != PHOTO).any(-1)
    changed[22:35, 38:51] = False
    assert not changed.any()
    assert result.image.size == (W, H)
    assert pipe.edit(PHOTO, regions, method="encode_then_cp", **FAST).preview is None


def test_point_fraction_keeps_a_subset_of_the_pairs(pipe):
    regions = regions_from_json({"pairs": [{"kind": "polygons", "handle": [[4, 4], [28, 4], [28, 28], [4, 28]],
                                            "target": [[34, 12], [60, 12], [60, 40], [34, 40]]}]}, (W, H))
    full = pipe.edit(PHOTO, regions, **FAST).mapping
    half = pipe.edit(PHOTO, regions, point_fraction=0.5, **FAST).mapping
    n = len(full[1])
    assert n >= 8 and len(half[0]) == len(half[1]) == round(0.5 * n)
    pairs = {tuple(h) + tuple(t) for h, t in zip(*full)}
    assert all(tuple(h) + tuple(t) in pairs for h, t in zip(*half))
    with pytest.raises(ValueError, match="point_fraction"):
        pipe.edit(PHOTO, regions, point_fraction=0, **FAST)


def test_cp_then_encode_preview_moves_only_the_kept_pairs(pipe):
    """With point_fraction < 1 the preview pastes the 8x8 blocks of the very pairs the latents move."""
    regions = regions_from_json({"pairs": [{"kind": "polygons", "handle": [[4, 4], [28, 4], [28, 28], [4, 28]],
                                            "target": [[34, 12], [60, 12], [60, 40], [34, 40]]}]}, (W, H))
    result = pipe.edit(PHOTO, regions, method="cp_then_encode", point_fraction=0.5, **FAST)
    expected = PHOTO.copy()
    for (hx, hy), (tx, ty) in zip(*result.mapping):  # the kept latent pairs, written out block by block
        expected[ty * 8:ty * 8 + 8, tx * 8:tx * 8 + 8] = PHOTO[hy * 8:hy * 8 + 8, hx * 8:hx * 8 + 8]
    np.testing.assert_array_equal(np.asarray(result.preview), expected)


@pytest.mark.parametrize("size", [(61, 45), (45, 61), (50, 50)])
def test_odd_sized_photo_comes_back_at_its_size(pipe, size):
    """Not a multiple of 8: the models work at the working size (latents 8x5, 5x8, 8x8: odd
    latent sides go through the UNet's down/up path) and the result is resized back."""
    w, h = size
    photo = make_photo(w, h, seed=2)
    regions = regions_from_json({"pairs": [{"kind": "points", "handle": [[w // 3, h // 3]],
                                            "target": [[w // 2, h // 2]], "radius": 8}]}, size)
    for method in ("encode_then_cp", "cp_then_encode"):
        result = pipe.edit(photo, regions, method=method, **dict(FAST, max_side=64))
        assert result.image.size == size and result.image.mode == "RGB"
    assert result.preview.size == {(61, 45): (64, 40), (45, 61): (40, 64), (50, 50): (64, 64)}[size]
    with pytest.raises(ImageError, match="not divisible by 8"):
        pipe.edit(photo, regions, **FAST)  # max_side=None: the size must already fit


def test_bad_arguments_are_refused(pipe):
    with pytest.raises(ValueError, match="either regions or a precomputed mapping"):
        pipe.edit(PHOTO, **FAST)
    with pytest.raises(ValueError, match="unknown method"):
        pipe.edit(PHOTO, mapping=SHIFT, method="nope", **FAST)
    with pytest.raises(ValueError, match="unknown grid"):
        pipe.edit(PHOTO, mapping=SHIFT, grid="nope", **FAST)
    with pytest.raises(ValueError, match="unknown copy-paste schedule"):
        pipe.edit(PHOTO, mapping=SHIFT, paste_schedule="nope", **FAST)



def test_an_unknown_setting_is_named_with_the_valid_ones(pipe):
    with pytest.raises(ValueError, match=r"'strat_t' is not a setting; EditConfig has steps, start_t, "):
        pipe.edit(PHOTO, mapping=SHIFT, strat_t=0.7, **FAST)


def test_a_prompt_that_is_not_text_or_too_long_is_refused(pipe):
    from regiondrag.config import MAX_PROMPT_CHARS, ConfigError

    for prompt in (None, 5, b"a cat", ["a cat"]):
        with pytest.raises(ConfigError, match="prompt=.* must be text"):
            pipe.edit(PHOTO, mapping=SHIFT, prompt=prompt, **FAST)
    with pytest.raises(ConfigError, match=f"a prompt of {MAX_PROMPT_CHARS + 1} characters is longer than"):
        pipe.edit(PHOTO, mapping=SHIFT, prompt="x" * (MAX_PROMPT_CHARS + 1), **FAST)
    assert pipe.cached_inversion() is None  # refused before any work
