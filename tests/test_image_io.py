"""Image I/O: every odd PIL mode loads as 8-bit RGB, clear errors for files that are not
images, the working-size rule of the reference UI, and atomic writes."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from regiondrag import image_io
from regiondrag.apps import outputs
from regiondrag.apps.outputs import save_image_atomic
from regiondrag.image_io import ImageError, load_image, working_size

W, H = 12, 8


def _grey() -> np.ndarray:
    return np.arange(W * H, dtype=np.uint8).reshape(H, W) * 2  # 0 ... 190, every pixel different


def _rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _write(tmp_path, name: str, image: Image.Image, **save_args):
    path = tmp_path / name
    image.save(path, **save_args)
    return path


# -- modes -----------------------------------------------------------------------------------

def test_rgba_transparent_pixels_become_white_and_opaque_ones_keep_their_colour(tmp_path):
    rgb = _rgb()
    alpha = np.full((H, W), 255, np.uint8)
    alpha[:, : W // 2] = 0  # left half fully transparent
    alpha[0, -1] = 128      # one half-transparent pixel
    path = _write(tmp_path, "rgba.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    out = load_image(path)
    a = np.asarray(out)
    assert out.mode == "RGB" and out.size == (W, H)
    assert (a[:, : W // 2] == 255).all()                       # white, not black
    assert (a[1:, W // 2:] == rgb[1:, W // 2:]).all()          # opaque: unchanged
    expected = np.round(rgb[0, -1].astype(float) * 128 / 255 + 255 * 127 / 255)  # composited over white
    assert np.abs(a[0, -1].astype(int) - expected).max() <= 1


def test_la_is_grey_over_white(tmp_path):
    grey, alpha = _grey(), np.full((H, W), 255, np.uint8)
    alpha[0] = 0
    path = _write(tmp_path, "la.png", Image.fromarray(np.dstack([grey, alpha]), "LA"))
    a = np.asarray(load_image(path))
    assert a.shape == (H, W, 3)
    assert (a[0] == 255).all()
    assert (a[1:] == grey[1:, :, None]).all()


def test_l_is_replicated_to_three_channels(tmp_path):
    path = _write(tmp_path, "l.png", Image.fromarray(_grey(), "L"))
    out = load_image(path)
    assert out.mode == "RGB" and (np.asarray(out) == _grey()[:, :, None]).all()


def _palette_image() -> tuple[Image.Image, np.ndarray]:
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    index = (np.arange(W * H) % 4).reshape(H, W).astype(np.uint8)
    p = Image.fromarray(index, "P")
    p.putpalette(colours.ravel().tolist() + [0] * (768 - colours.size))
    return p, colours[index]


def test_palette_image_gives_its_colours(tmp_path):
    p, expected = _palette_image()
    out = load_image(_write(tmp_path, "p.png", p))
    assert out.mode == "RGB" and (np.asarray(out) == expected).all()


def test_palette_transparency_becomes_white(tmp_path):
    p, expected = _palette_image()
    path = _write(tmp_path, "p_t.png", p, transparency=3)  # palette entry 3 is transparent
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    a = np.asarray(load_image(path))
    index = (np.arange(W * H) % 4).reshape(H, W)
    assert (a[index == 3] == 255).all()
    assert (a[index != 3] == expected[index != 3]).all()


def test_16_bit_grey_is_rescaled_to_the_full_8_bit_range(tmp_path):
    a16 = (np.arange(W * H, dtype=np.uint16).reshape(H, W) * 300 + 1000)  # 1000 ... 29500
    path = _write(tmp_path, "i16.png", Image.fromarray(a16))
    assert Image.open(path).mode in ("I;16", "I")
    a = np.asarray(load_image(path))
    assert a.shape == (H, W, 3) and a.dtype == np.uint8
    assert a.min() == 0 and a.max() == 255  # the darkest and brightest pixels, not all black/white
    assert (np.diff(a[..., 0].ravel().astype(int)) >= 0).all()  # order kept


def test_1_bit_is_black_and_white(tmp_path):
    bits = (_grey() % 4 == 0)
    path = _write(tmp_path, "one.png", Image.fromarray(bits).convert("1"))
    assert Image.open(path).mode == "1"
    a = np.asarray(load_image(path))
    assert set(np.unique(a)) == {0, 255}
    assert ((a[..., 0] == 255) == bits).all()


def test_cmyk_jpeg_is_converted(tmp_path):
    path = _write(tmp_path, "cmyk.jpg", Image.new("CMYK", (W, H), (0, 255, 255, 0)), quality=100)
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (W, H)
    r, g, b = np.asarray(out).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60  # full magenta + yellow ink = red


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "I;16", "1", "CMYK"])
def test_in_memory_images_of_any_mode_load_as_rgb(mode):
    image = Image.fromarray(_rgb()).convert(mode) if mode != "I;16" else Image.fromarray(_grey().astype(np.uint16))
    out = load_image(image)
    assert out.mode == "RGB" and out.size == (W, H)


def test_arrays_load_as_rgb():
    assert load_image(_rgb()).mode == "RGB"
    assert (np.asarray(load_image(_rgb() / 255.0)) == _rgb()).all()  # float images in [0, 1]
    with pytest.raises(ImageError, match=r"\(H, W\), \(H, W, 3\) or \(H, W, 4\)"):
        load_image(np.zeros((H, W, 2), np.uint8))


# -- unreadable inputs --------------------------------------------------------------------------

def test_missing_file_says_not_found(tmp_path):
    with pytest.raises(ImageError, match=r"image file not found: .*nope\.png"):
        load_image(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="is a folder, not a regular file"):
        load_image(tmp_path)


@pytest.mark.parametrize("content", [b"this is not a picture", b""], ids=["text", "empty"])
def test_unreadable_file_says_what_to_give(tmp_path, content):
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=r"cannot read .*photo\.png as an image .*give a PNG or JPEG") as e:
        load_image(path)
    assert "\n" not in str(e.value)


def test_truncated_png_is_an_image_error(tmp_path):
    good = _write(tmp_path, "good.png", Image.fromarray(_rgb()))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match="cannot read"):
        load_image(cut)


# -- working size ---------------------------------------------------------------------------------

def reference_working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """RegionDrag's ui_utils.get_W_H: the long side becomes max_side, the short one
    int(max_side / aspect) (or int(max_side * aspect)); both floored to multiples of 8."""
    aspect = width / height
    h = int(max_side / aspect) if aspect >= 1 else max_side
    w = max_side if aspect >= 1 else int(max_side * aspect)
    return int(w / 8) * 8, int(h / 8) * 8


@pytest.mark.parametrize("size, max_side, expected", [
    ((451, 300), 512, (512, 336)),   # chelsea.png: 340.6 -> 340 -> 336
    ((300, 451), 512, (336, 512)),
    ((512, 512), 512, (512, 512)),
    ((600, 400), 64, (64, 40)),      # 42.7 -> 42 -> 40
    ((32, 16), 64, (64, 32)),        # small photos are scaled up, as in the reference
])
def test_working_size_examples(size, max_side, expected):
    assert working_size(*size, max_side) == expected


def test_working_size_long_side_is_max_side_and_matches_the_reference():
    """The long side is exactly max_side (a multiple of 8) for every width: a float product
    like 49 * (64 / 49) = 63.999... must not floor it to max_side - 8."""
    for max_side in (64, 512):
        for long in range(8, 1100):
            for short in {long, 2 * long // 3, long // 3}:  # aspect 1 ... 3
                for w, h in ((long, short), (short, long)):
                    got = working_size(w, h, max_side)
                    assert max(got) == max_side, (w, h, max_side, got)
                    assert got == reference_working_size(w, h, max_side), (w, h, max_side)
                    assert got[0] % 8 == 0 and got[1] % 8 == 0


def test_working_size_none_keeps_multiples_of_8():
    assert working_size(64, 40, None) == (64, 40)


def test_working_size_none_refuses_sizes_not_divisible_by_8():
    with pytest.raises(ImageError, match=r"61x45 is not divisible by 8.*max_side") as e:
        working_size(61, 45, None)
    assert "\n" not in str(e.value)


def test_working_size_too_elongated():
    with pytest.raises(ImageError, match="too elongated"):
        working_size(1000, 10, 64)


# -- atomic save ----------------------------------------------------------------------------------

def test_save_writes_the_image_and_no_temporary_files(tmp_path):
    out = save_image_atomic(Image.fromarray(_rgb()), tmp_path / "sub" / "out.png")
    assert out == tmp_path / "sub" / "out.png"
    assert os.listdir(tmp_path / "sub") == ["out.png"]
    assert (np.asarray(Image.open(out)) == _rgb()).all()


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    save_image_atomic(Image.fromarray(_rgb()), path)
    assert (np.asarray(Image.open(path)) == _rgb()).all()
    assert os.listdir(tmp_path) == ["out.png"]


@pytest.mark.parametrize("existing", [False, True])
def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch, existing):
    """A write that dies halfway (disk full, killed) leaves the old file, or none: never half a PNG."""
    path = tmp_path / "out.png"
    if existing:
        path.write_bytes(b"old result")
    real_save = Image.Image.save

    def dying_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        if isinstance(fp, io.BytesIO):  # the up-front check that the format can be written
            return
        fp.seek(0)
        fp.truncate(10)  # half written ...
        raise OSError(28, "No space left on device")  # ... then the disk fills

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(ImageError, match=r"cannot write .*out\.png: No space left on device$"):
        save_image_atomic(Image.fromarray(_rgb()), path)
    assert os.listdir(tmp_path) == (["out.png"] if existing else [])
    if existing:
        assert path.read_bytes() == b"old result"


def test_save_unknown_extension_is_a_clear_error(tmp_path):
    with pytest.raises(ImageError, match=r"unknown image extension '\.xyz'.*\.png or \.jpg"):
        save_image_atomic(Image.fromarray(_rgb()), tmp_path / "out.xyz")
    assert os.listdir(tmp_path) == []


def test_jpeg_save_round_trips(tmp_path):
    out = save_image_atomic(Image.fromarray(_rgb()), tmp_path / "out.jpg")
    assert Image.open(out).format == "JPEG" and Image.open(out).size == (W, H)


def test_to_tensor_and_back_is_exact():
    import torch

    x = image_io.to_tensor(Image.fromarray(_rgb()))
    assert x.shape == (1, 3, H, W) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert (np.asarray(image_io.to_pil(x)) == _rgb()).all()


# -- hostile and odd inputs -------------------------------------------------------------

def _png_declaring(tmp_path, width: int, height: int):
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's few bytes)."""
    import struct
    import zlib

    data = bytearray(io.BytesIO().getvalue())
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [9000, 20000, 100000])  # over our cap; over PIL's warning; over PIL's error
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    with pytest.raises(ImageError, match=rf"declares more than {image_io.MAX_IMAGE_PIXELS}|{side}x{side}, more than"):
        load_image(_png_declaring(tmp_path, side, side))


def test_an_image_just_within_the_pixel_cap_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", W * H)
    assert load_image(_write(tmp_path, "ok.png", Image.fromarray(_rgb()))).size == (W, H)
    monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", W * H - 1)
    with pytest.raises(ImageError, match="more than 95 pixels"):
        load_image(_write(tmp_path, "ok.png", Image.fromarray(_rgb())))


def test_exif_orientation_is_applied_on_read(tmp_path):
    """A camera JPEG stored sideways with Orientation=6 (rotate 90 cw to display) loads as displayed."""
    stored = np.zeros((H, W, 3), np.uint8)
    stored[0, :] = 255  # a white top row as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _write(tmp_path, "sideways.png", Image.fromarray(stored), exif=exif)
    shown = np.asarray(load_image(path))
    assert shown.shape == (W, H, 3)  # width and height swapped
    assert (shown[:, -1] == 255).all() and (shown[:, 0] == 0).all()  # the top row is now the right column


@pytest.mark.parametrize("mode", ["LAB", "HSV", "YCbCr", "CMYK", "1", "I", "F", "La", "RGBa", "RGBX"])
def test_every_mode_pil_reads_loads_or_is_refused_in_one_line(tmp_path, mode):
    image = Image.fromarray(_rgb()).convert("RGBA").convert(mode) if mode in ("La", "RGBa") else \
        Image.fromarray(_rgb()).convert(mode) if mode not in ("LAB", "HSV") else Image.new(mode, (W, H))
    try:
        out = load_image(image)
    except ImageError as e:
        assert "\n" not in str(e) and "RGB" in str(e)
    else:
        assert out.mode == "RGB" and out.size == (W, H)


@pytest.mark.parametrize("array, fragment", [
    (np.full((H, W), np.nan), "NaN"), (np.zeros((H, W), complex), "must be numbers"),
    (np.zeros((H, W, 2)), "shape"), (np.zeros((2, H, W, 3)), "shape")])
def test_bad_arrays_are_clear_errors(array, fragment):
    with pytest.raises(ImageError, match=fragment):
        load_image(array)


@pytest.mark.parametrize("name", ["out.xbm", "out.palm", "out.msp", "out.psd"])
def test_formats_pil_cannot_write_rgb_to_are_refused_up_front(tmp_path, name):
    with pytest.raises(ImageError, match=r"use \.png or \.jpg"):
        outputs.check_output_path(tmp_path / name)


def test_an_output_path_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "x.png").mkdir()
    with pytest.raises(ImageError, match="is a folder"):
        save_image_atomic(Image.fromarray(_rgb()), tmp_path / "x.png")


def test_outputs_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_image_atomic(Image.fromarray(_rgb()), tmp_path / "out.png")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# -- the one rule for mask files: alpha if present, else luminance --------------------------------

def _mask_image(mode: str) -> Image.Image:
    inside = np.zeros((H, W), bool)
    inside[2:5, 3:9] = True
    if mode == "RGBA":  # white paint everywhere, opaque only inside: alpha decides
        a = np.full((H, W, 4), 255, np.uint8)
        a[..., 3] = inside * 255
        return Image.fromarray(a)
    if mode == "LA":  # black paint, opaque inside
        return Image.fromarray(np.stack([np.zeros((H, W), np.uint8), inside.astype(np.uint8) * 255], -1), "LA")
    if mode == "P":  # palette with a transparent index 0, white index 1 inside, and (opaque) black nowhere
        image = Image.fromarray(inside.astype(np.uint8), "P")
        image.putpalette([0, 0, 0, 255, 255, 255])
        image.info["transparency"] = 0
        return image
    if mode == "I;16":
        return Image.fromarray(inside.astype(np.uint16) * 300)
    return Image.fromarray(inside.astype(np.uint8) * 255).convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "RGB", "1", "I;16"])
def test_mask_files_read_alpha_if_present_else_luminance(tmp_path, mode):
    expected = np.zeros((H, W), bool)
    expected[2:5, 3:9] = True
    path = _write(tmp_path, "mask.png", _mask_image(mode))
    assert np.array_equal(image_io.load_mask(path), expected)


# -- what decoding alone would accept: damaged PNGs, NaN pixels, files over the cap, wrong types ----------

def _png_with_damaged_pixels(tmp_path):
    """A PNG whose pixel data (IDAT) was changed after its checksum was written: it still decodes."""
    import struct
    import zlib

    path = _write(tmp_path, "damaged.png", Image.fromarray(_rgb()))
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", data[start - 8:start - 4])
    rows = np.frombuffer(zlib.decompress(bytes(data[start:start + length])), np.uint8).reshape(H, -1).copy()
    rows[: H // 2, 1:] = 0  # the first half of the rows garbled (not their filter bytes)
    idat = zlib.compress(rows.tobytes())
    data[start - 8:start + length] = struct.pack(">I", len(idat)) + b"IDAT" + idat  # the old CRC stays
    path.write_bytes(bytes(data))
    return path


def test_a_png_whose_checksum_fails_is_refused(tmp_path):
    path = _png_with_damaged_pixels(tmp_path)
    decoded = np.asarray(Image.open(path).convert("RGB"))  # PIL alone: no word, garbage pixels
    assert (decoded != _rgb()).any(axis=-1).mean() > 0.4
    with pytest.raises(ImageError, match=r"damaged.png is damaged: the checksum of its 'IDAT' chunk"):
        load_image(path)
    assert load_image(_write(tmp_path, "intact.png", Image.fromarray(_rgb()), compress_level=0)).size == (W, H)


def test_a_float_image_with_nan_pixels_is_refused(tmp_path):
    """An all-NaN "F" image became black."""
    for values in (np.full((H, W), np.nan, np.float32), np.where(_grey() > 100, np.inf, 1.0).astype(np.float32)):
        with pytest.raises(ImageError, match="F image has NaN or infinite pixels"):
            load_image(_write(tmp_path, "f.tiff", Image.fromarray(values, "F")))


def test_an_image_file_over_the_byte_cap_is_too_large(tmp_path, monkeypatch):
    path = _write(tmp_path, "big.png", Image.fromarray(_rgb()))
    monkeypatch.setattr(image_io, "MAX_IMAGE_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(image_io.ImageTooLargeError, match=f"big.png has more than {path.stat().st_size - 1} bytes"):
        load_image(path)


@pytest.mark.parametrize("value", [None, 5, b"photo.png", bytearray(4), [1, 2]])
def test_load_image_of_another_type_is_one_line(value):
    """These raised a bare TypeError from inside pathlib or PIL."""
    with pytest.raises(ImageError, match=f"an image is a file path, a PIL image or a numpy array; got "
                                         f"{type(value).__name__}"):
        load_image(value)


def test_load_image_of_a_tensor_is_one_line():
    import torch

    with pytest.raises(ImageError, match="got Tensor"):
        load_image(torch.zeros(3, 8, 8))
