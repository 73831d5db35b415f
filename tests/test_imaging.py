import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from harmony_core import imaging
from harmony_core.errors import InputError
from harmony_core.types import HarmonizationRequest
from tests.support import alpha_to_mask


def save(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_rgb_from_every_mode():
    rgb = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    assert np.array_equal(imaging.load_rgb(save(base.convert("RGBA"))), rgb)
    assert imaging.load_rgb(save(base.convert("P"))).shape == (10, 12, 3)
    gray = imaging.load_rgb(save(base.convert("L")))
    assert np.array_equal(gray[:, :, 0], gray[:, :, 2])
    la = imaging.load_rgb(save(base.convert("LA")))
    assert np.array_equal(la, gray)
    cmyk = imaging.load_rgb(save(base.convert("CMYK"), "JPEG", quality=100))
    assert cmyk.shape == (10, 12, 3) and np.abs(cmyk.astype(int) - rgb).mean() < 40


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    loaded = imaging.load_rgb(save(image))
    assert loaded[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied():
    array = np.zeros((10, 20, 3), np.uint8)
    array[:, :10] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    loaded = imaging.load_rgb(save(image, "JPEG", exif=exif.tobytes(), quality=100))
    assert loaded.shape == (20, 10, 3)
    assert loaded[:8].mean() > 200 and loaded[12:].mean() < 50  # left half is now on top


@pytest.mark.parametrize("fmt", ["L", "RGB", "RGBA-alpha", "JPEG", "1", "P"])
def test_mask_encodings_threshold_at_half(fmt):
    truth = np.zeros((32, 32), bool)
    truth[8:24, 4:20] = True
    values = truth.astype(np.uint8) * 255
    if fmt == "L":
        data = save(Image.fromarray(values))
    elif fmt == "RGB":
        data = save(Image.fromarray(np.dstack([values] * 3)))
    elif fmt == "RGBA-alpha":  # white strokes on a transparent layer
        data = save(Image.fromarray(np.dstack([np.full_like(values, 255)] * 3 + [values])))
    elif fmt == "JPEG":
        data = save(Image.fromarray(values), "JPEG", quality=70)
    elif fmt == "1":
        data = save(Image.fromarray(values).convert("1", dither=Image.Dither.NONE))
    else:
        data = save(Image.fromarray(values).convert("P"))
    assert np.array_equal(imaging.load_mask(data), truth)


def test_mask_threshold_is_explicit_not_dithered():
    gray = Image.fromarray(np.full((16, 16), 100, np.uint8))  # 39%: below 0.5 everywhere
    assert not imaging.load_mask(save(gray)).any()
    gray = Image.fromarray(np.full((16, 16), 140, np.uint8))  # 55%: above everywhere
    assert imaging.load_mask(save(gray)).all()


def test_alpha_to_mask():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[1:3, 1:3, 3] = 200
    assert alpha_to_mask(rgba).sum() == 4
    with pytest.raises(InputError, match="alpha"):
        alpha_to_mask(np.zeros((4, 4, 3), np.uint8))


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="not an image"):
        imaging.load_rgb(bad)
    with pytest.raises(InputError, match="no such file"):
        imaging.load_rgb(tmp_path / "missing.png")
    truncated = save(Image.new("RGB", (64, 64), "red"), "JPEG")[:200]
    with pytest.raises(InputError):
        imaging.load_rgb(truncated)


def test_decompression_bomb_refused_before_decoding():
    # A PNG header claiming 60000 x 60000 pixels: refused from the header alone.
    png = bytearray(save(Image.new("L", (1, 1))))
    png[16:24] = struct.pack(">II", 60000, 60000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # keep the IHDR chunk valid
    with pytest.raises(InputError, match="larger than"):
        imaging.load_rgb(bytes(png))


def test_zero_size_array():
    with pytest.raises(InputError, match="zero size"):
        imaging.load_rgb(np.zeros((0, 5, 3), np.uint8))


def test_request_validation(scene):
    real, composite, mask = scene
    with pytest.raises(InputError, match="empty"):
        HarmonizationRequest(composite, np.zeros_like(mask))
    with pytest.raises(InputError, match="whole image"):
        HarmonizationRequest(composite, np.ones_like(mask))
    with pytest.raises(InputError, match="Size mismatch"):
        HarmonizationRequest(composite, mask[:50])
    with pytest.raises(InputError, match="ground_truth"):
        HarmonizationRequest(composite, mask, ground_truth=real[:50])
    with pytest.raises(InputError, match="seed"):
        HarmonizationRequest(composite, mask, seed="1")
    request = HarmonizationRequest(composite, mask.astype(np.uint8) * 255, seed=np.int64(3))
    assert request.mask.dtype == bool and request.seed == 3 and request.size == (128, 96)


def test_place_foreground_alpha_and_cropping():
    background = np.full((50, 60, 3), 10, np.uint8)
    fg = np.zeros((20, 20, 4), np.uint8)
    fg[..., 0] = 250
    fg[5:15, 5:15, 3] = 255
    composite, mask = imaging.place_foreground(background, fg, x=0.5, y=0.5, scale=1.0)
    assert mask.sum() == 100
    assert (composite[mask][:, 0] == 250).all() and (composite[~mask] == 10).all()
    # Half outside the right edge: cropped, not an error.
    composite, mask = imaging.place_foreground(background, fg, x=1.0, y=0.5, scale=2.0)
    assert 0 < mask.sum() < 400 and mask[:, -1].any()
    with pytest.raises(InputError, match="does not cover"):
        imaging.place_foreground(background, fg, x=3.0, y=3.0)
    with pytest.raises(InputError, match="scale"):
        imaging.place_foreground(background, fg, scale=0)
    # RGB foreground + its own mask.
    rgb = np.full((10, 10, 3), 200, np.uint8)
    own = np.zeros((10, 10), bool)
    own[2:8, 2:8] = True
    _, mask = imaging.place_foreground(background, rgb, foreground_mask=own)
    assert mask.sum() == 36


def test_paste_back_and_resizes(scene):
    real, composite, mask = scene
    out = imaging.paste_back(np.zeros_like(composite), composite, mask)
    assert (out[~mask] == composite[~mask]).all() and (out[mask] == 0).all()
    small = imaging.resize_mask(mask, (64, 48))
    assert small.dtype == bool and small.shape == (48, 64)
    capped = imaging.cap_long_side(composite, 64)
    assert capped.shape == (48, 64, 3)


def test_save_image_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    imaging.save_image(np.zeros((4, 4, 3), np.uint8), target)
    before = target.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(OSError):
        imaging.save_image(np.full((4, 4, 3), 255, np.uint8), target)
    assert target.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary left behind
