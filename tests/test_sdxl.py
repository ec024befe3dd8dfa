"""SDXL: our UNet (UNetConfig.sdxl() structure) against diffusers' UNet2DConditionModel with an
SDXL-style config on the same random weights, loaded through weights/ from a diffusers folder."""
import pytest
import torch
from diffusers import UNet2DConditionModel as RefUNet
from test_model_parity import assert_close, unet_inputs

import weights
from models import UNet, UNetConfig
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
