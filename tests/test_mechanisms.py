"""The method's mechanisms, each checked against a value computed independently of our code.

These are the tests an ablation breaks first: the K/V a self-attention layer is told to use
(keys and values separately, one layer at a time), the handle-noise blend, and the noise draw of
"CP then Encode" whose length the reference fixes by its border rule. scripts/mutation_check.py
plants a bug in each mechanism and asserts that this suite goes red.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from models import UNet, UNetConfig
from models.attention import SelfAttention
from regiondrag.copy_paste import add_handle_noise
from regiondrag.mapping import idw_displace

from regiondrag.apps.baseline import DiffusersUNet
from test_pipeline import FAST, PHOTO, SHIFT, UNetRecorder, at, new_pipe


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(UNetConfig.tiny()).eval()


def inputs(cfg: UNetConfig, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, cfg.in_channels, 8, 8, generator=g), torch.tensor(500),
            torch.randn(1, 77, cfg.context_dim, generator=g))


class SelfAttentionTaps:
    """Forward hooks on every self-attention module, in call order (the order of the K/V list):
    what each was given and what it returned."""

    def __init__(self, unet: UNet):
        self.calls, self.handles = [], []
        for m in unet.modules():
            if isinstance(m, SelfAttention):
                self.handles.append(m.register_forward_hook(self._hook))

    def _hook(self, module, args, output):
        self.calls.append((module, args[0], output[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def reference_attention(module: SelfAttention, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head, then the output projection, in float64 with explicit maths."""
    x, k, v = x.double(), k.double(), v.double()
    q = x @ module.to_q.weight.double().T
    b, n, c = q.shape
    h = module.heads
    d = c // h
    split = lambda t: t.reshape(b, -1, h, d).permute(0, 2, 1, 3)  # (B, heads, L, d)
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (weights @ split(v)).permute(0, 2, 1, 3).reshape(b, n, c)
    return out @ module.to_out[0].weight.double().T + module.to_out[0].bias.double()


@pytest.mark.parametrize("part", ["keys", "values"])
@torch.no_grad()
def test_each_layer_attends_with_the_keys_and_values_it_is_given(unet, part):
    """Per layer, alone: replay another input's keys only (own values), then values only (own keys);
    the layer's output must be attention over exactly those tensors."""
    x, t, context = inputs(unet.cfg, seed=1)
    _, own = unet.forward_recording_kv(x, t, context)
    _, other = unet.forward_recording_kv(*inputs(unet.cfg, seed=2))
    layers = unet.num_self_attention_layers
    for layer in range(layers):
        k = other[layer][0] if part == "keys" else own[layer][0]
        v = other[layer][1] if part == "values" else own[layer][1]
        kv = [None] * layers
        kv[layer] = (k, v)
        with SelfAttentionTaps(unet) as taps:
            unet(x, t, context, kv=kv)
        module, given_x, out = taps.calls[layer]
        expected = reference_attention(module, given_x, k, v)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5, msg=f"layer {layer}, {part}")
        # the replayed tensor mattered: attention over the layer's own K/V is something else
        own_out = reference_attention(module, given_x, *own[layer])
        assert (expected - own_out).abs().max() > 1e-3, f"layer {layer}: replaying {part} changed nothing"


@torch.no_grad()
def test_a_layer_reports_the_keys_and_values_of_its_own_input(unet):
    """What is recorded during inversion is to_k / to_v of the layer's input (not another layer's)."""
    x, t, context = inputs(unet.cfg, seed=3)
    with SelfAttentionTaps(unet) as taps:
        _, kvs = unet.forward_recording_kv(x, t, context)
    assert len(kvs) == len(taps.calls) == unet.num_self_attention_layers
    for layer, ((module, given_x, _), (k, v)) in enumerate(zip(taps.calls, kvs)):
        torch.testing.assert_close(k, given_x @ module.to_k.weight.T, msg=f"layer {layer} keys")
        torch.testing.assert_close(v, given_x @ module.to_v.weight.T, msg=f"layer {layer} values")


@pytest.mark.parametrize("s", [0.3, 0.6, 0.9])
def test_handle_noise_blends_with_sqrt_one_minus_s_squared(s):
    """x*sqrt(1-s^2) + s*noise at the handle cells, with the noise the generator draws for them."""
    x = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    handle = torch.tensor([[1, 1], [2, 1], [5, 4]])
    out = add_handle_noise(x, handle, s, torch.Generator().manual_seed(7))
    noise = torch.randn(1, 4, len(handle), generator=torch.Generator().manual_seed(7))
    expected = at(x, handle.numpy()) * math.sqrt(1 - s * s) + s * noise
    torch.testing.assert_close(at(out, handle.numpy()), expected)


def test_handle_noise_preserves_unit_variance():
    """Why the square root: a unit-variance latent stays unit-variance for every s."""
    x = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    cells = torch.stack(torch.meshgrid(torch.arange(64), torch.arange(64), indexing="xy"), -1).reshape(-1, 2)
    for s in (0.5, 0.8):
        out = add_handle_noise(x, cells, s, torch.Generator().manual_seed(1))
        assert abs(out.var().item() - 1) < 0.05, s


def simplified_contour_length(cells: np.ndarray, size: tuple[int, int]) -> int:
    """The reference's border: the vertices cv2.findContours(CHAIN_APPROX_SIMPLE) gives for the target."""
    grid = np.zeros(size, np.uint8)
    grid[cells[:, 1], cells[:, 0]] = 1
    contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return sum(len(c) for c in contours)


def test_cp_then_encode_handle_noise_is_the_reference_draw(models):
    """CP then Encode draws one noise for the target's simplified contour and the handles, in that
    order, right after sampling the preview's latent: with the same seed, every vacated handle cell
    gets the noise that draw puts there."""
    handle, target = SHIFT
    pipe = new_pipe(models)
    with UNetRecorder(pipe.unet) as rec:
        result = pipe.edit(PHOTO, mapping=SHIFT, method="cp_then_encode", return_intermediates=True, **FAST)
    latent_shape = result.inversion.latents[0].shape
    border = simplified_contour_length(target, latent_shape[-2:])
    assert border == 4  # a 3x3 block: its 4 corners
    g = torch.Generator().set_state(result.inversion.generator_state)
    torch.randn(latent_shape, generator=g)  # the preview's posterior sample
    draw = torch.randn(1, 4, border + len(handle), generator=g)
    vacated = np.array([xy for xy in handle.tolist() if xy not in target.tolist()])
    assert len(vacated) == len(handle)  # SHIFT does not overlap
    torch.testing.assert_close(at(rec.denoising()[0].x, vacated), draw[..., border:])


def idw_by_hand(point: np.ndarray, controls: np.ndarray, displacement: np.ndarray, chosen: list[int]) -> np.ndarray:
    d = np.linalg.norm((controls[chosen] - point).astype(np.float64), axis=1)
    w = 1 / (d + 1e-4)
    return np.rint(point + (w[:, None] * displacement[chosen]).sum(0) / w.sum()).astype(np.int64)


def test_idw_ties_go_to_the_lower_control_index():
    """Three controls at distance 1 and four tied at distance 3: the fourth neighbour is the first of
    the tied ones, whatever order a partition would leave them in."""
    point = np.array([[10, 10]])
    offsets = np.array([[3, 0], [0, 3], [1, 0], [0, 1], [-1, 0], [-3, 0], [0, -3]])  # distances 3 3 1 1 1 3 3
    displacement = np.array([[30, 0], [-30, 0], [1, 1], [1, 1], [1, 1], [0, 30], [0, -30]])
    moved = idw_displace(point, point + offsets, displacement)
    np.testing.assert_array_equal(moved[0], idw_by_hand(point[0], point + offsets, displacement, [0, 2, 3, 4]))
    order = [6, 5, 4, 3, 2, 1, 0]  # reversed: the tied control that comes first is another one
    moved = idw_displace(point, (point + offsets)[order], displacement[order])
    np.testing.assert_array_equal(moved[0], idw_by_hand(point[0], point + offsets, displacement, [6, 4, 3, 2]))


def test_idw_uses_the_four_nearest_controls():
    """Weights 1/(d + 1e-4) over the 4 nearest, computed here directly."""
    rng = np.random.default_rng(0)
    points, controls = rng.integers(0, 50, (30, 2)), rng.integers(0, 50, (9, 2))
    displacement = rng.integers(-5, 6, (9, 2))
    expected = []
    for p in points:
        d = np.linalg.norm((controls - p).astype(np.float64), axis=1)
        order = sorted(range(len(d)), key=lambda i: (d[i], i))[:4]
        w = np.array([1 / (d[i] + 1e-4) for i in order])
        expected.append(p + (w[:, None] * displacement[order]).sum(0) / w.sum())
    np.testing.assert_array_equal(idw_displace(points, controls, displacement), np.rint(expected).astype(np.int64))


@pytest.mark.parametrize("layers", ["all", "every_other"])
@torch.no_grad()
def test_replaying_another_inputs_kv_matches_diffusers_with_the_references_hooks(unet, layers):
    """Replay input B's K/V while denoising input A: ours equals diffusers' UNet on the same weights
    with the reference's mechanism (forward hooks that replace to_k / to_v outputs)."""
    x, t, context = inputs(unet.cfg, seed=4)
    _, kv_b = unet.forward_recording_kv(*inputs(unet.cfg, seed=5))
    kv = kv_b if layers == "all" else [kv if i % 2 else None for i, kv in enumerate(kv_b)]
    ours = unet(x, t, context, kv=kv)
    reference = DiffusersUNet(unet)(x, t, context, kv=kv)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert (ours - unet(x, t, context)).abs().max() > 1e-3  # the replay changed the prediction
