"""DragBench metrics: LPIPS against the `lpips` package, DIFT against both references' recipes on
diffusers, Mean Distance's matching against brute-force re-derivations, on known shifts and on planted
feature fields (both protocols), DAI on images whose patches the test places."""
import math
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
    DAI_RADII, DIFT, DRAGDIFFUSION, FEATURE_CHUNK, LPIPS_SIZE, REGIONDRAG, dai, image_to_tensor, lpips_distance,
    match_points, mean_distance, point_distances, search_masks,
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


@pytest.fixture(scope="module")
def dift_twins():
    """(our UNet, our VAE, diffusers' UNet, diffusers' VAE) with the same random weights; three levels, so
    that the second up-block ends in an upsampler as in SD."""
    from diffusers import AutoencoderKL as DAutoencoderKL, UNet2DConditionModel

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
    return unet, vae, d_unet, d_vae


@torch.no_grad()
def reference_features(d_unet, latents, context, generator):
    """Both references' featurizers after encoding: DDIM add_noise at 261, a forward hook on
    `list(unet.children())[4][1]` (the second up-block, upsampler included), mean over the copies."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    noisy = scheduler.add_noise(latents, torch.randn(latents.shape, generator=generator), torch.tensor(261))
    hooked = []
    handle = list(d_unet.children())[4][1].register_forward_hook(lambda m, i, o: hooked.append(o))
    d_unet(noisy, torch.tensor(261), context.expand(len(latents), -1, -1))
    handle.remove()
    return hooked[0].mean(dim=0, keepdim=True)


def test_dift_matches_regiondrags_recipe_on_diffusers(dift_twins):
    """RegionDrag's SDFeaturizer: the image resized (nearest) to the square size, mode() * scaling, 8 copies."""
    unet, vae, d_unet, d_vae = dift_twins
    image, context = image_to_tensor(random_image(48, 56)), torch.randn(1, 77, 32)
    with torch.no_grad():
        image_64 = F.interpolate(image, size=(64, 64))  # RegionDrag's compute_distance resize (nearest)
        latents = (d_vae.encode(image_64).latent_dist.mode() * vae.scaling_factor).expand(8, -1, -1, -1)
    expected = reference_features(d_unet, latents, context, torch.Generator().manual_seed(0))
    got = DIFT(unet, vae, image_size=64)(image, context, torch.Generator().manual_seed(0))
    assert got.shape == (1, 64, 8, 8)  # latents 8x8, the second up-block's upsampler back to 8x8
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_dift_matches_dragdiffusions_recipe_on_diffusers(dift_twins):
    """DragDiffusion's dift_sd.py: the image at its own size (here 48x56: odd latent levels), repeated 8
    times, `latent_dist.sample()` per copy (drawn before the noise, from the same generator)."""
    unet, vae, d_unet, d_vae = dift_twins
    image, context = image_to_tensor(random_image(48, 56)), torch.randn(1, 77, 32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = d_vae.encode(image.repeat(8, 1, 1, 1)).latent_dist.sample(g) * vae.scaling_factor
    expected = reference_features(d_unet, latents, context, g)
    dift = DIFT(unet, vae, image_size=64)
    got = dift(image, context, torch.Generator().manual_seed(0), square=False, sample_posterior=True)
    assert got.shape == (1, 64, 6, 7)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    mean_latent = dift(image, context, torch.Generator().manual_seed(0), square=False)  # RegionDrag's mode()
    assert not torch.allclose(mean_latent, got, atol=1e-3)


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


def test_bilinear_matching_equals_dragdiffusions_whole_image_search():
    """DragDiffusion's way: both feature maps F.interpolate(..., 'bilinear') to (H, W), nn.CosineSimilarity of
    the handle's vector with every pixel, argmax over the whole image. Channels > FEATURE_CHUNK: chunked."""
    g = torch.Generator().manual_seed(1)
    h, w = 23, 31
    handles = torch.tensor([[0, 0], [30, 22], [12, 7], [5, 18]])
    src, trg = torch.randn(2, 1, 2 * FEATURE_CHUNK + 5, 7, 10, generator=g)
    got = match_points(src, trg, handles, torch.ones(len(handles), h, w, dtype=torch.bool), "bilinear")
    up_src, up_trg = (F.interpolate(f, size=(h, w), mode="bilinear") for f in (src, trg))
    for (x, y), (mx, my) in zip(handles.tolist(), got.tolist()):
        cos = nn.CosineSimilarity(dim=1)(up_src[:, :, y, x, None, None], up_trg)[0]
        row, col = np.unravel_index(cos.numpy().argmax(), cos.shape)
        assert (mx, my) == (col, row)


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

    def __call__(self, image, context, generator=None, **options):
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


class PlantedFeatures:
    """A stand-in for DIFT returning given feature maps at pixel resolution (so resizing to the photo is the
    identity): `original` for the original image, `edited` for the other."""

    def __init__(self, original_image, original, edited):
        self.image, self.original, self.edited = image_to_tensor(original_image), original, edited

    def context(self, prompt):
        return None

    def __call__(self, image, context, generator=None, **options):
        return self.original if torch.equal(image, self.image) else self.edited


def test_dragdiffusion_md_finds_planted_matches_anywhere_where_regiondrags_disks_cannot():
    """Each handle's feature is planted at one chosen pixel of the edited image's feature field (cosine 1;
    every other pixel a random unit vector): the field's MD is that pixel's distance to the target, in
    pixels, even far outside the disks RegionDrag's protocol searches; that protocol finds another match."""
    h, w, c = 32, 40, 24
    g = torch.Generator().manual_seed(0)
    original, edited = F.normalize(torch.randn(2, 1, c, h, w, generator=g), dim=2)
    handles, targets = np.array([[5, 5], [20, 16], [33, 27]]), np.array([[10, 5], [22, 18], [30, 27]])
    planted = np.array([[36, 28], [21, 17], [2, 3]])  # the first and last far outside both disks
    for (hx, hy), (px, py) in zip(handles, planted):
        edited[0, :, py, px] = original[0, :, hy, hx]
    photo, edit = random_image(h, w), random_image(h, w, seed=1)
    features = PlantedFeatures(photo, original, edited)
    got = point_distances(photo, edit, handles, targets, "", features, DRAGDIFFUSION)
    expected = [math.hypot(tx - px, ty - py) for (tx, ty), (px, py) in zip(targets, planted)]
    torch.testing.assert_close(got, torch.tensor(expected))

    disks = search_masks(torch.as_tensor(handles), torch.as_tensor(targets), h, w)
    assert not disks[0, 28, 36] and not disks[2, 3, 2] and disks[1, 17, 21]
    matches = match_points(original, edited, torch.as_tensor(handles), disks, REGIONDRAG.feature_resize)
    assert matches[1].tolist() == [21, 17]  # inside its disks: found
    for i in (0, 2):  # RegionDrag's protocol matches inside the disks, nearer the target than the planted pixel
        assert disks[i, matches[i, 1], matches[i, 0]]
    relative = point_distances(photo, edit, handles, targets, "", features, REGIONDRAG)
    planted_relative = np.hypot((targets - planted)[:, 0] / w, (targets - planted)[:, 1] / h)
    assert relative[1] == pytest.approx(planted_relative[1]) and (relative[[0, 2]].numpy() < planted_relative[[0, 2]]).all()


class CoarseFeatures(PlantedFeatures):
    """PlantedFeatures at a coarser resolution than the photo, recording the options each call was given."""

    def __init__(self, *args):
        super().__init__(*args)
        self.options = []

    def __call__(self, image, context, generator=None, **options):
        self.options.append(options)
        return super().__call__(image, context, generator)


def test_each_protocol_is_its_reference_scorer():
    """On coarse random feature maps (7x9 for a 40x52 photo), each protocol's distances are what its
    reference scorer computes, re-derived here from the scripts: DragDiffusion's (bilinear upsampling,
    cosine over the whole image, pixels) and RegionDrag's (nearest, argmax inside the disks, x / W and y / H);
    each asks DIFT for its own preprocessing."""
    h, w = 40, 52
    g = torch.Generator().manual_seed(2)
    src, trg = torch.randn(2, 1, 16, 7, 9, generator=g)
    photo, edit = random_image(h, w), random_image(h, w, seed=1)
    handles, targets = [[3, 4], [30, 20], [51, 39], [17, 33]], [[12, 4], [30, 28], [40, 30], [2, 35]]

    def best(cos, allowed=None):
        cos = cos if allowed is None else np.where(allowed, cos, -np.inf)
        return np.unravel_index(cos.argmax(), cos.shape)  # (row, col)

    up_src, up_trg = (F.interpolate(f, size=(h, w), mode="bilinear") for f in (src, trg))
    expected = [np.hypot(ty - r, tx - c) for (hx, hy), (tx, ty) in zip(handles, targets)
                for r, c in [best(nn.CosineSimilarity(dim=1)(up_src[:, :, hy, hx, None, None], up_trg)[0].numpy())]]
    features = CoarseFeatures(photo, src, trg)
    got = point_distances(photo, edit, handles, targets, "", features, DRAGDIFFUSION)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert features.options == [dict(square=False, sample_posterior=True)] * 2

    near_src, near_trg = (F.normalize(F.interpolate(f, size=(h, w)), dim=1)[0].numpy() for f in (src, trg))
    y, x = np.mgrid[:h, :w]
    expected = []
    for (hx, hy), (tx, ty) in zip(handles, targets):
        radius = max(5, math.hypot(tx - hx, ty - hy) / math.sqrt(2))
        disks = (np.hypot(x - hx, y - hy) < radius) | (np.hypot(x - tx, y - ty) < radius)
        r, c = best(np.einsum("c,chw->hw", near_src[:, hy, hx], near_trg), disks)
        expected.append(math.hypot((tx - c) / w, (ty - r) / h))
    features = CoarseFeatures(photo, src, trg)
    got = point_distances(photo, edit, handles, targets, "", features, REGIONDRAG)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert features.options == [dict(square=True, sample_posterior=False)] * 2
    assert mean_distance(photo, edit, handles, targets, "", CoarseFeatures(photo, src, trg)) == \
        pytest.approx(np.mean(expected))


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


# ---------------------------------------------------------------- DAI

def ramp(h, w, start):
    """uint8 image whose every channel is start + x: content moved by d pixels in x differs by d / 255."""
    return np.repeat((start + np.arange(w)).astype(np.uint8)[None, :, None], h, axis=0).repeat(3, 2)


@pytest.mark.parametrize("dx", [0, 1, 2, 4])
def test_dai_of_content_moved_to_the_target_plus_a_known_offset(dx):
    """The ramp's content at each handle is placed at its target (30 px to the right), dx pixels short: each
    patch pixel differs by dx / 255 in each of 3 channels, so DAI = 3 (dx / 255)^2 at every radius, border
    patches included (averaged over their pixels inside the image, not over (2r + 1)^2)."""
    h, w = 96, 160
    handles, targets = np.array([[30, 40], [3, 4]]), np.array([[60, 50], [33, 14]])
    got = dai(ramp(h, w, 40), ramp(h, w, 40 - 30 - dx), handles, targets)
    assert set(got) == set(DAI_RADII)
    for r in DAI_RADII:
        assert got[r] == pytest.approx(3 * (dx / 255) ** 2, abs=1e-15)


def test_dai_is_zero_for_a_pasted_patch_and_grows_with_its_offset():
    """A random photo's patch around the handle pasted at the target (0, 1 or 2 rows low) into another
    random image: DAI is 0, then the photo's own row-to-row differences, computed here directly."""
    h, w, big = 80, 96, max(DAI_RADII) + 2
    original = random_image(h, w, seed=3)
    (hx, hy), (tx, ty) = (25, 30), (60, 45)

    def pasted(offset):
        edited = random_image(h, w, seed=4)
        edited[ty - big + offset:ty + big + 1 + offset, tx - big:tx + big + 1] = \
            original[hy - big:hy + big + 1, hx - big:hx + big + 1]
        return dai(original, edited, [[hx, hy]], [[tx, ty]])

    assert pasted(0) == {r: 0.0 for r in DAI_RADII}
    for offset in (1, 2):
        got = pasted(offset)
        for r in DAI_RADII:
            cols = slice(hx - r, hx + r + 1)
            moved = original[hy - r - offset:hy + r + 1 - offset, cols].astype(float)  # what lands on the target
            expected = np.square((moved - original[hy - r:hy + r + 1, cols]) / 255).sum() / (2 * r + 1) ** 2
            assert got[r] == pytest.approx(expected) and expected > 0


def test_dai_input_errors():
    image = random_image(32, 40)
    with pytest.raises(ValueError, match=r"target points \[\[40\.0, 3\.0\]\] lie outside the 40x32 image"):
        dai(image, image, [[4, 3]], [[40, 3]])
    with pytest.raises(ValueError, match="edited image is 20x32, original 40x32"):
        dai(image, image[:, :20], [[4, 3]], [[5, 3]])
