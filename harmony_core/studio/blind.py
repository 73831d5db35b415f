"""Blind encodings: the one form in which a rater sees an image before voting.

Every round encodes its images afresh, so nothing in the served bytes links an image to a method,
to the stored output or to an earlier round of the same sample:

- the pixels get a per-round random dither (a share of the channel values moved by one level,
  imperceptible: see DITHER_SHARE), so no pixel hash repeats;
- the format is always a PNG written here: a header, one IDAT chunk and the end, no metadata at
  all (no EXIF, no text, no gamma), whatever the stored file held;
- every image of a round has the same pixel size (the largest, padded with black where a set's
  outputs differ) and the same byte size, a per-round random one: the deflate streams are padded
  with empty deflate blocks (decoders skip them), so neither the file size nor the compressed
  size inside the PNG tells one method's image from another's.

What this cannot hide: the pixels themselves. Anyone holding the study set's outputs (a public
set is in the repository) can match a served image to its nearest stored output, so a real study
uses a private set (docs/security.md).
"""

from __future__ import annotations

import secrets
import struct
import zlib

import numpy as np

DITHER_SHARE = 0.1
"""Share of the channel values moved by +1 or -1 level (at random) in each round's copy: a mean
absolute change of at most 0.1 levels, a largest of 1 (PSNR >= 58 dB against the stored pixels)."""
PAD_RANGE = (24, 4096)
"""The byte size of a round's images is the largest encoding plus a random number of bytes in this
range (at least 24, which any length can be written as 5a + 6b from)."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EMPTY_STORED = b"\x00\x00\x00\xff\xff"
"""A non-final stored deflate block of length 0, byte-aligned: 5 bytes that decode to nothing."""
EMPTY_FIXED_AND_STORED = b"\x02\x00\x00\x00\xff\xff"
"""A non-final empty fixed-Huffman block (10 bits) then an empty stored block: 6 bytes, nothing decoded."""


def _rng() -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(128))


def dither(image: np.ndarray, rng: np.random.Generator, share: float = DITHER_SHARE) -> np.ndarray:
    """The image with `share` of its channel values moved one level up or down (clipped at 0 / 255)."""
    steps = rng.integers(-1, 2, size=image.shape, dtype=np.int16) * (rng.random(image.shape) < share)
    return np.clip(image.astype(np.int16) + steps, 0, 255).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _rows(image: np.ndarray) -> bytes:
    """PNG scanlines with the Sub filter (each byte minus the one a pixel to its left)."""
    h, w, c = image.shape
    flat = image.reshape(h, w * c)
    sub = flat.copy()
    sub[:, c:] = flat[:, c:] - flat[:, :-c]  # uint8 arithmetic wraps modulo 256, as the filter wants
    return np.hstack([np.ones((h, 1), np.uint8), sub]).tobytes()


def _deflate(image: np.ndarray) -> tuple[bytes, bytes]:
    """(the zlib stream up to a byte-aligned flush, its final block and checksum): empty blocks
    inserted between the two change the length but not what decodes."""
    compressor = zlib.compressobj(1)  # fast (~25 ms for 450x300); the size says nothing anyway
    return compressor.compress(_rows(image)) + compressor.flush(zlib.Z_SYNC_FLUSH), compressor.flush(zlib.Z_FINISH)


def _padding(length: int) -> bytes:
    """Empty deflate blocks of exactly `length` bytes (length >= 24 or 0)."""
    sixes = length % 5
    return EMPTY_FIXED_AND_STORED * sixes + EMPTY_STORED * ((length - 6 * sixes) // 5)


def _png(image: np.ndarray, stream: bytes) -> bytes:
    h, w = image.shape[:2]
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def _common_size(images: list[np.ndarray]) -> list[np.ndarray]:
    """The images at one pixel size (the largest height and width, black below and to the right)."""
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    return [i if i.shape[:2] == (h, w) else np.pad(i, ((0, h - i.shape[0]), (0, w - i.shape[1]), (0, 0)))
            for i in images]


def encode_round(images: list[np.ndarray], rng: np.random.Generator | None = None) -> list[bytes]:
    """One round's PNG files (RGB uint8 arrays in, in order): dithered afresh, metadata-free, of one
    pixel size and one random byte size."""
    rng = rng or _rng()
    images = _common_size([np.ascontiguousarray(i[..., :3], np.uint8) for i in images])
    streams = [_deflate(dither(image, rng)) for image in images]
    target = max(len(a) + len(b) for a, b in streams) + int(rng.integers(*PAD_RANGE))
    return [_png(image, body + _padding(target - len(body) - len(tail)) + tail)
            for image, (body, tail) in zip(images, streams)]
