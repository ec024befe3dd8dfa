"""DragBench metrics: LPIPS against the `lpips` package, DIFT against the reference's recipe on
diffusers, Mean Distance's matching against a brute-force re-derivation and on known shifts."""
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import AutoencoderKL, UNet, UNetConfig, VAEConfig
from models.lpips import AlexNet
from regiondrag.dragbench.metrics import (
    DIFT, LPIPS_SIZE, image_to_tensor, lpips_distance, match_points, mean_distance, search_masks,
)
import weights.lpips
from weights import WeightsError
from weights.lpips import load_lpips, lpips_heads_path

needs_lpips = pytest.mark.skipif(importlib.util.find_spec("lpips") is None,
                                 reason="needs the lpips package (pip install --no-deps lpips): heads and reference")


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- LPIPS

@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    """Random AlexNet weights in torchvision's file layout (a classifier key included, to be skipped)."""
    torch.manual_seed(0)
    sd = {f"features.{k}": v for k, v in AlexNet().features.state_dict().items()}
    sd["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("weights") / "alexnet-owt-test.pth"
    torch.save(sd, path)
    return path


def torchvision_alexnet_stand_in() -> types.ModuleType:
    """torchvision's AlexNet `features` layer list (torchvision/models/alexnet.py), for when PyPI's
    torchvision cannot load beside this torch build: lpips only reads `tv.alexnet(...).features`."""
    def alexnet(pretrained=False, **_):
        return types.SimpleNamespace(features=nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2)))
    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    tv.models.alexnet = alexnet
    return tv


@pytest.fixture(scope="module")
def reference_lpips(alexnet_file):
    """lpips.LPIPS(net='alex') v0.1 with its own heads file and our AlexNet weights."""
    with pytest.MonkeyPatch.context() as mp:
        try:
            import torchvision  # noqa: F401
        except Exception:  # PyPI's torchvision fails to load its operators beside torch's CPU build
            tv = torchvision_alexnet_stand_in()
            mp.setitem(sys.modules, "torchvision", tv)
            mp.setitem(sys.modules, "torchvision.models", tv.models)
        import lpips
        ref = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    sd = torch.load(alexnet_file, weights_only=True)
    # lpips keeps torchvision's layer indices inside its slices: net.sliceK.I.weight <- features.I.weight
    ref.net.load_state_dict({k: sd["features." + k.split(".", 1)[1]] for k in ref.net.state_dict()})
    return ref.eval()


@needs_lpips
def test_lpips_matches_lpips_package(alexnet_file, reference_lpips):
    ours = load_lpips(lpips_heads_path(), alexnet_file)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 64, 96, generator=g) * 2 - 1
    x1 = (x0 + 0.5 * torch.randn(x0.shape, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        expected = reference_lpips(x0, x1).flatten()
        got = ours(x0, x1)
    assert expected.min() > 1e-2  # a real distance, not a vacuous 0 = 0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@needs_lpips
def test_lpips_distance_is_the_benchmark_recipe(alexnet_file, reference_lpips):
    """uint8 -> [-1, 1] -> bilinear 224x224 -> LPIPS, as RegionDrag's compute_lpips; sizes may differ."""
    ours = load_lpips(lpips_heads_path(), alexnet_file)
    a, b = random_image(48, 80, seed=1), random_image(40, 64, seed=2)
    x0, x1 = (F.interpolate(image_to_tensor(im), size=(LPIPS_SIZE, LPIPS_SIZE), mode="bilinear") for im in (a, b))
    with torch.no_grad():
        expected = reference_lpips(x0, x1).item()
    assert lpips_distance(a, b, ours) == pytest.approx(expected, abs=1e-5)
    assert lpips_distance(a, a, ours) == pytest.approx(0.0, abs=1e-7)


def test_lpips_loader_errors_name_the_file(tmp_path, alexnet_file):
    heads = {f"lin{k}.model.1.weight": torch.zeros(1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))}
    good = tmp_path / "alex.pth"
    torch.save(heads, good)
    assert load_lpips(good, alexnet_file)(torch.zeros(1, 3, 64, 64), torch.ones(1, 3, 64, 64)).item() == 0.0

    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_lpips(tmp_path / "nowhere.pth", alexnet_file)
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in heads.items() if k != "lin4.model.1.weight"}, missing)
    with pytest.raises(WeightsError, match=r"missing\.pth.*lin4\.model\.1\.weight"):
        load_lpips(missing, alexnet_file)
    vgg = tmp_path / "vgg.pth"
    torch.save({**heads, "lin0.model.1.weight": torch.zeros(1, 128, 1, 1)}, vgg)
    with pytest.raises(WeightsError, match=r"vgg\.pth: lin0\.model\.1\.weight has shape \(1, 128, 1, 1\)"):
        load_lpips(vgg, alexnet_file)
    with pytest.raises(WeightsError, match=r"alex\.pth is not a torchvision AlexNet"):
        load_lpips(good, good)  # files swapped


def test_fetch_alexnet_uses_the_cache_and_checks_the_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("REGIONDRAG_WEIGHTS", str(tmp_path))
    cached = tmp_path / "alexnet-owt-7be5be79.pth"
    cached.write_bytes(b"already here")

    def no_network(url, dest):
        raise AssertionError("downloaded although the file is cached")
    monkeypatch.setattr(weights.lpips.urllib.request, "urlretrieve", no_network)
    assert weights.lpips.fetch_alexnet() == cached

    cached.unlink()
    monkeypatch.setattr(weights.lpips.urllib.request, "urlretrieve", lambda url, dest: dest.write_bytes(b"corrupt"))
    with pytest.raises(RuntimeError, match="wrong sha256"):
        weights.lpips.fetch_alexnet()
    assert not any(tmp_path.iterdir())  # neither the checkpoint nor the partial download is left


# ---------------------------------------------------------------- DIFT and Mean Distance

def tiny_models(scaling_factor=VAEConfig.scaling_factor, **unet_config):
    torch.manual_seed(0)
    unet = UNet(UNetConfig.tiny(linear_proj=True, **unet_config)).eval()  # SD2.x-style projections, as SD2.1
    return unet, AutoencoderKL(VAEConfig.tiny(scaling_factor=scaling_factor)).eval()


def test_dift_matches_the_reference_recipe_on_diffusers():
    """RegionDrag's SDFeaturizer: mode() * scaling, 8 copies, DDIM add_noise at 261, a forward hook
    on `list(unet.children())[4][1]` (the second up-block, upsampler included), mean over copies."""
    from diffusers import AutoencoderKL as DAutoencoderKL, DDIMScheduler, UNet2DConditionModel

    # three levels, so that the second up-block ends in an upsampler as in SD
    unet, vae = tiny_models(block_channels=(32, 64, 64), attention_levels=(True, True, False), heads=(2, 2, 2))
    d_unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8, use_linear_projection=True).eval()
    d_unet.load_state_dict(unet.state_dict())
    d_vae = DAutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                           up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4).eval()
    d_vae.load_state_dict(vae.state_dict())
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

    dift = DIFT(unet, vae, image_size=64)
    image, context = image_to_tensor(random_image(48, 56)), torch.randn(1, 77, 32)
    with torch.no_grad():
        image_64 = F.interpolate(image, size=(64, 64))  # RegionDrag's compute_distance resize (nearest)
        latents = d_vae.encode(image_64).latent_dist.mode() * vae.scaling_factor
        latents = latents.expand(8, -1, -1, -1)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        noisy = scheduler.add_noise(latents, noise, torch.tensor(261))
        hooked = []
        handle = list(d_unet.children())[4][1].register_forward_hook(lambda m, i, o: hooked.append(o))
        d_unet(noisy, torch.tensor(261), context.expand(8, -1, -1))
        handle.remove()
        expected = hooked[0].mean(dim=0, keepdim=True)
    got = dift(image, context, torch.Generator().manual_seed(0))
    assert got.shape == (1, 64, 8, 8)  # latents 8x8, the second up-block's upsampler back to 8x8
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_match_points_equals_brute_force_on_upsampled_features():
    """The reference's way: resize features to (H, W) (nearest), normalise, argmax inside the mask."""
    g = torch.Generator().manual_seed(0)
    h, w = 23, 31
    handles = torch.tensor([[0, 0], [30, 22], [12, 7], [5, 18]])
    targets = torch.tensor([[3, 1], [20, 22], [12, 7], [25, 3]])
    masks = search_masks(handles, targets, h, w)
    for fh, fw in ((h, w), (7, 10)):  # features at pixel resolution (no ties), and coarser (ties)
        src, trg = torch.randn(2, 1, 16, fh, fw, generator=g)
        got = match_points(src, trg, handles, masks)
        up_src, up_trg = (F.normalize(F.interpolate(f, size=(h, w)), dim=1)[0] for f in (src, trg))
        sim = torch.einsum("cn,chw->nhw", up_src[:, handles[:, 1], handles[:, 0]], up_trg).masked_fill(~masks, -2)
        best = sim.flatten(1).max(dim=1).values
        assert masks[torch.arange(len(got)), got[:, 1], got[:, 0]].all()
        torch.testing.assert_close(sim[torch.arange(len(got)), got[:, 1], got[:, 0]], best)
        if (fh, fw) == (h, w):
            flat = sim.flatten(1).argmax(dim=1)
            assert torch.equal(got, torch.stack([flat % w, flat // w], dim=1))


def test_search_masks_radius():
    """Closer than max(5, |t - h| / sqrt 2) to the handle or the target, strictly."""
    handles, targets = torch.tensor([[10, 10], [10, 10]]), torch.tensor([[10, 10], [30, 17]])
    m = search_masks(handles, targets, 32, 48)
    for n, r2 in ((0, 25), (1, (20 ** 2 + 7 ** 2) / 2)):
        pair = (handles[n].tolist(), targets[n].tolist())
        expected = torch.tensor([[any((x - p[0]) ** 2 + (y - p[1]) ** 2 < r2 for p in pair) for x in range(48)]
                                 for y in range(32)])
        assert torch.equal(m[n], expected)
    assert m[0].sum() == 69  # radius 5: the 81 lattice points with d^2 <= 25, less the 12 at d^2 == 25


class PatchFeatures:
    """A hand-built stand-in for DIFT: each pixel's 5x5 RGB neighbourhood (circular), so features of
    a random texture are unique per pixel and move exactly with np.roll."""

    def context(self, prompt):
        return None

    def __call__(self, image, context, generator=None):
        return F.unfold(F.pad(image, (2, 2, 2, 2), mode="circular"), 5).view(1, 75, *image.shape[2:])


@pytest.mark.parametrize("shift, drag, expected", [
    ((6, -3), (6, -3), 0.0),       # content moved exactly to the target
    ((6, -3), (8, -3), 2 / 40),    # moved 2 px short of the target in x
    ((0, 0), (0, 4), 4 / 32),      # not moved at all: the match stays on the handle, 4 px above
    ((3, 0), (0, 0), 3 / 40),      # moved although handle == target
])
def test_mean_distance_on_known_shifts(shift, drag, expected):
    original = random_image(32, 40)
    edited = np.roll(original, (shift[1], shift[0]), axis=(0, 1))
    handles = np.array([[12, 10], [25, 20], [18, 15]])
    md = mean_distance(original, edited, handles, handles + np.array(drag), "", PatchFeatures())
    assert md == pytest.approx(expected, abs=1e-7)


def test_mean_distance_with_a_tiny_dift():
    """End to end on random weights. A random VAE's latents are ~0.05 in std, which the noise at
    t = 261 would swamp; scaling them up makes the features follow the content, as SD's do."""
    unet, vae = tiny_models(scaling_factor=10.0)
    dift = DIFT(unet, vae, image_size=64)  # 8x8 latents and features: one feature per pixel of an 8x8 image
    image, context = random_image(8, 8), torch.randn(1, 77, 32)
    points = [[2, 3], [3, 5], [1, 4]]

    def md(edited):
        return mean_distance(image, edited, points, points, context, dift, torch.Generator().manual_seed(0))

    assert md(image) == 0.0  # two independent noise draws, same best match
    one, two = (md(np.roll(image, s, axis=1)) for s in (1, 2))  # moved although handle == target
    assert 0 < one < two


def test_mean_distance_input_errors():
    image, stand_in = random_image(32, 40), PatchFeatures()
    with pytest.raises(ValueError, match=r"handle points \[\[40\.0, 3\.0\]\] lie outside the 40x32 image"):
        mean_distance(image, image, [[40, 3]], [[5, 3]], "", stand_in)
    with pytest.raises(ValueError, match=r"target points \[\[5\.0, -1\.0\]\]"):
        mean_distance(image, image, [[4, 3]], [[5, -1]], "", stand_in)
    with pytest.raises(ValueError, match="2 handle points but 1 target points"):
        mean_distance(image, image, [[4, 3], [6, 6]], [[5, 3]], "", stand_in)
    with pytest.raises(ValueError, match=r"non-empty \(N, 2\)"):
        mean_distance(image, image, [4, 3], [5, 3], "", stand_in)
    with pytest.raises(ValueError, match="edited image is 20x32, original 40x32"):
        mean_distance(image, image[:, :20], [[4, 3]], [[5, 3]], "", stand_in)
    with pytest.raises(ValueError, match=r"original must be a uint8 \(H, W, 3\)"):
        mean_distance(image.astype(np.float32), image, [[4, 3]], [[5, 3]], "", stand_in)
    with pytest.raises(ValueError, match="no text encoder"):
        DIFT(*tiny_models()).context("a cat")
