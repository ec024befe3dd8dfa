"""Folded upsamplers (models/folding.py): nearest 2x upsampling and a 3x3 convolution as one 2x2 convolution."""
import pytest
import torch
import torch.nn.functional as F

from models import UNet, UNetConfig
from models.folding import FoldedUpsample, fold_upsamplers
from models.onednn import pack_convolutions, packing_available
from models.unet import Upsample
from models.vae import AutoencoderKL, VAEConfig


def upsample_pair(channels: int = 6, dtype=torch.float64) -> tuple[Upsample, FoldedUpsample]:
    torch.manual_seed(0)
    up = Upsample(channels).to(dtype).requires_grad_(False)
    torch.nn.init.normal_(up.conv.bias)  # not zero: a bias lost in the folding must show
    return up, FoldedUpsample(up)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("h, w, size", [(5, 7, None), (4, 4, (8, 8)), (1, 3, None)])
def test_a_folded_upsample_is_the_upsample_in_float64(layout, h, w, size):
    """Every output pixel of every phase against torch's own nearest upsampling and 3x3 convolution (the Upsample
    it folds), to float64 rounding, at the image's borders too; the input's memory layout is kept."""
    up, folded = upsample_pair()
    x = torch.randn(2, 6, h, w, dtype=torch.float64).contiguous(memory_format=layout)
    want = up(x, size)
    got = folded(x, size)
    assert got.shape == want.shape == (2, 6, 2 * h, 2 * w)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert got.is_contiguous(memory_format=layout)


def test_an_odd_size_takes_the_upsample_path():
    """The UNet's up path meeting an odd skip (a latent side not a multiple of 2^levels): nearest to that size and
    the 3x3 convolution, as before folding."""
    up, folded = upsample_pair()
    x = torch.randn(1, 6, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(folded(x, (9, 8)), up(x, (9, 8)), rtol=0, atol=0)
    torch.testing.assert_close(folded(x, (10, 7)), F.conv2d(F.interpolate(x, size=(10, 7)), up.conv.weight,
                                                            up.conv.bias, padding=1), rtol=0, atol=1e-12)


def test_folding_keeps_the_state_dict_and_applies_where_there_are_upsamplers():
    """The state dict is the unfolded model's (same keys, same values: a baseline or a float32 copy loads from
    it); one upsampler per level but the last in the UNet and in the VAE decoder, none in the encoder; folding
    twice is a no-op."""
    torch.manual_seed(0)
    unet, vae = UNet(UNetConfig.tiny()), AutoencoderKL(VAEConfig.tiny())
    before = {name: m.state_dict() for name, m in (("unet", unet), ("vae", vae))}
    levels = len(unet.cfg.block_channels) - 1
    assert fold_upsamplers(unet) == levels and fold_upsamplers(vae) == len(vae.cfg.block_channels) - 1
    assert fold_upsamplers(unet) == levels  # already folded ones are kept as they are
    assert sum(isinstance(m, FoldedUpsample) for m in vae.encoder.modules()) == 0
    for name, m in (("unet", unet), ("vae", vae)):
        after = m.state_dict()
        assert after.keys() == before[name].keys()
        assert all(torch.equal(after[k], before[name][k]) for k in after)


def test_a_folded_unet_and_vae_decoder_give_their_output():
    """Whole models folded, in float64: the same prediction and the same decoded image."""
    torch.manual_seed(0)
    unet, vae = UNet(UNetConfig.tiny()).double().eval(), AutoencoderKL(VAEConfig.tiny()).double().eval()
    x, z = torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(1, 4, 8, 8, dtype=torch.float64)
    context, t = torch.randn(1, 77, UNetConfig.tiny().context_dim, dtype=torch.float64), torch.tensor(500)
    with torch.inference_mode():
        want_eps, want_image = unet(x, t, context), vae.decode(z)
        fold_upsamplers(unet), fold_upsamplers(vae)
        torch.testing.assert_close(unet(x, t, context), want_eps, rtol=0, atol=1e-10)
        torch.testing.assert_close(vae.decode(z), want_image, rtol=0, atol=1e-10)


@pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN bfloat16 convolution")
def test_a_folded_upsample_with_packed_convolutions_stays_within_bfloat16_rounding():
    """In bfloat16, folded and packed (as on CPU), against the float64 upsample of the same bfloat16 values: no
    further off than the plain bfloat16 Upsample is."""
    up64, _ = upsample_pair(16)
    up = Upsample(16).to(torch.bfloat16).requires_grad_(False)
    up.load_state_dict(up64.state_dict())
    exact = Upsample(16).double().requires_grad_(False)
    exact.load_state_dict(up.state_dict())  # the bfloat16-rounded weights, in float64
    folded = FoldedUpsample(up)
    assert pack_convolutions(folded) == 2
    x = torch.randn(1, 16, 12, 12, dtype=torch.bfloat16)
    want = exact(x.double())
    assert (folded(x).double() - want).abs().max() <= 1.5 * (up(x).double() - want).abs().max()
