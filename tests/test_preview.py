"""Preview: a readable PNG of the regions and the mapping over the photo."""
import contextlib
import signal

import numpy as np
from PIL import Image

from regiondrag.mapping import dense_mapping
from regiondrag.apps.preview import draw_preview
from regiondrag.regions import MaskPair, PointPairs, PolygonPair, RegionPoints


def photo(w=240, h=176):
    y, x = np.mgrid[:h, :w]
    return Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))


def test_preview_png_has_the_photo_size_and_marks_the_regions(tmp_path):
    image = photo()
    handle = np.zeros((176, 240), bool)
    handle[40:80, 30:70] = True
    regions = [MaskPair(handle, np.roll(handle, 100, 1)),
               PointPairs(np.array([[60.0, 140.0]]), np.array([[200.0, 140.0]]), radius=10.0)]
    mapping = dense_mapping(regions, image.size)
    draw_preview(image, regions, mapping).save(tmp_path / "p.png")
    out = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).astype(int)
    before = np.asarray(image).astype(int)
    assert out.shape == before.shape
    changed = np.abs(out - before).sum(-1) > 0
    assert changed[45:75, 35:65].mean() > 0.9  # handle mask tinted
    assert changed[45:75, 135:165].mean() > 0.9  # target mask tinted
    assert changed[140, 60] and changed[140, 200]  # point pair drawn
    assert not changed[:20, 150:].any() and not changed[100:120, 100:140].any()  # away from regions
    red_minus_blue = (out - before)[..., 0] - (out - before)[..., 2]
    assert red_minus_blue[50:70, 35:45].mean() > 0 > red_minus_blue[50:70, 155:165].mean()


def test_preview_draws_every_kind_and_accepts_arrays():
    image = np.asarray(photo())
    region = np.zeros((176, 240), bool)
    region[100:150, 150:220] = True
    regions = [PolygonPair(np.array([[20.0, 20.0], [90.0, 25.0], [50.0, 90.0]]),
                           np.array([[30.0, 30.0], [100.0, 35.0], [60.0, 100.0]])),
               PolygonPair(np.array([[120.0, 10.0], [200.0, 10.0], [200.0, 80.0], [120.0, 80.0]]),
                           np.array([[130.0, 20.0], [220.0, 15.0], [210.0, 90.0], [125.0, 85.0]])),
               RegionPoints(region, np.array([[180.0, 120.0]]), np.array([[160.0, 110.0]]))]
    out = draw_preview(image, regions, dense_mapping(regions, (240, 176)))
    assert out.size == (240, 176) and out.mode == "RGB"
    changed = np.abs(np.asarray(out).astype(int) - image).sum(-1) > 0
    assert changed[40:60, 40:60].mean() > 0.9 and changed[110:140, 160:200].mean() > 0.9


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (rather than hang the run) when the body does not finish in time."""
    def expire(*_):
        raise TimeoutError(f"did not finish in {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_many_pairs_on_one_target_cell_finish_with_one_arrow():
    """41 pairs onto one cell (the arrow lattice could never thin them below MAX_ARROWS)."""
    from regiondrag.apps.preview import MAX_ARROWS, _spread

    handle = np.stack([np.arange(MAX_ARROWS + 1), np.zeros(MAX_ARROWS + 1, int)], 1)
    with deadline(20):
        h, t = _spread(handle, np.zeros((MAX_ARROWS + 1, 2), int), 3)
    assert t.tolist() == [[0, 0]] and h.tolist() == [[0, 0]]  # one arrow, the first pair's


def test_preview_of_41_point_pairs_onto_one_point_finishes():
    image = photo()
    # all onto latent cell (0, 0), which lies on every lattice
    regions = [PointPairs(np.array([[10.0 + 4 * i, 40.0] for i in range(41)]), np.full((41, 2), 3.0), radius=0.0)]
    with deadline(20):
        out = draw_preview(image, regions, dense_mapping(regions, image.size))
    assert out.size == image.size


def test_spread_keeps_an_even_subset_of_distinct_targets():
    from regiondrag.apps.preview import MAX_ARROWS, _spread

    target = np.stack(np.meshgrid(np.arange(30), np.arange(20)), -1).reshape(-1, 2)
    h, t = _spread(target + 1, target, 1)
    assert 0 < len(t) <= MAX_ARROWS and (h == t + 1).all()
    assert len({tuple(x) for x in t}) == len(t) and t[:, 0].max() - t[:, 0].min() >= 15  # spread, not clustered
