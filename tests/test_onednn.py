"""Convolutions with oneDNN-packed weights (models/onednn.py): the same convolution, only faster on CPU in bfloat16."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import UNet, UNetConfig
from models.onednn import PackedConv2d, pack_convolutions, packing_available, unpack_convolutions

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN bfloat16 convolution")

# (in, out, kernel, stride, padding, bias): the UNet's 3x3 convolution, its downsampler, its 1x1 shortcut (no bias
# here, so a dropped bias would not go unnoticed by the others), the VAE's downsampler (no padding)
GEOMETRIES = [(8, 16, 3, 1, 1, True), (16, 16, 3, 2, 1, True), (8, 16, 1, 1, 0, False), (16, 16, 3, 2, 0, True)]


@pytest.mark.parametrize("cin, cout, kernel, stride, padding, bias", GEOMETRIES)
def test_a_packed_convolution_is_the_convolution_in_float64(cin, cout, kernel, stride, padding, bias):
    """Against the same bfloat16 values convolved in float64: no further off than torch's own bfloat16 convolution,
    at the first input shape and at another one (the weight packed again for it)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias).to(torch.bfloat16).requires_grad_(False)
    w64 = conv.weight.double()
    b64 = None if conv.bias is None else conv.bias.double()
    plain = nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias).to(torch.bfloat16).requires_grad_(False)
    plain.load_state_dict(conv.state_dict())
    packed = PackedConv2d(conv)
    for shape in ((1, cin, 16, 16), (2, cin, 12, 20)):
        x = torch.randn(shape, dtype=torch.bfloat16)
        exact = F.conv2d(x.double(), w64, b64, stride, padding)
        got = packed(x)
        assert got.shape == exact.shape and packed.packed_for == shape
        assert (got.double() - exact).abs().max() <= 1.5 * (plain(x).double() - exact).abs().max() + 1e-3
    assert torch.equal(packed.weight, conv.weight)  # the dense values read back exactly


def test_packing_and_unpacking_a_unet_keeps_its_output():
    """A tiny UNet packed gives its unpacked output within bfloat16 rounding; unpacked again, exactly its output
    (the same weights back in plain nn.Conv2d)."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig.tiny()).to(torch.bfloat16).eval().requires_grad_(False)
    x, t, context = torch.randn(1, 4, 16, 16, dtype=torch.bfloat16), torch.tensor(500), torch.randn(1, 77, 32)
    context = context.to(torch.bfloat16)
    with torch.inference_mode():
        before = unet(x, t, context)
        convs = sum(isinstance(m, nn.Conv2d) for m in unet.modules())
        assert pack_convolutions(unet) == convs > 0
        assert not any(isinstance(m, nn.Conv2d) for m in unet.modules())
        packed = unet(x, t, context)
        assert packed.is_contiguous()  # the noise prediction in the latent's layout, not oneDNN's channels-last
        scale = before.float().abs().max()
        assert (packed.float() - before.float()).abs().max() <= 0.05 * scale
        assert unpack_convolutions(unet) == convs
        assert torch.equal(unet(x, t, context), before)
