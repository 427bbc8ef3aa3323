"""Uploaded bytes -> model-ready tensors, and tensors -> PNG / GIF / data URLs.

The conversion rule (documented in the README):
1. Only PNG, JPEG, GIF, WebP and BMP are decoded; anything else is refused (415). An
   animated image contributes its first frame.
2. The pixel count is read from the header and checked against the limit *before*
   decoding, so a decompression bomb costs nothing.
3. The image is converted to the model's channels: transparency is composited onto white,
   16-bit greyscale scaled to 8 bits, CMYK/palette converted, then greyscale ('L') or RGB.
4. A non-square image is padded to a square with the median colour of its border.
5. It is resized to the model's side with Lanczos (antialiased) resampling.
6. ``invert`` flips it (x -> 1 - x): the Fashion-MNIST models expect light objects on a
   dark background, so dark-on-light drawings and photos should be inverted.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import zlib
from collections.abc import Callable

import numpy as np
import torch
from isal import isal_zlib
from PIL import Image, ImageOps, UnidentifiedImageError

from models.imaging import make_grid, to_mode, to_uint8

from .gif_worker import GifProcess, encode_gif

ALLOWED_FORMATS = {"PNG", "JPEG", "GIF", "WEBP", "BMP"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that change nothing in the conversion rule (colour management and metadata are
# ignored on both paths). Any other chunk, tRNS and PLTE included, takes the general path.
PNG_INERT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"pHYs", b"tIME", b"gAMA", b"cHRM", b"sRGB", b"iCCP"}
DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]+)?(;[\w=.-]+)*;base64,", re.IGNORECASE)


class ImageError(ValueError):
    """The upload is not an image we can use; the message tells the client why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_base64(text: str, field: str) -> bytes:
    """Plain base64 or a ``data:image/...;base64,`` URL -> bytes."""
    if not isinstance(text, str) or not text:
        raise ImageError(f"{field}: expected a non-empty base64 string or data: URL")
    match = DATA_URL.match(text)
    if match:
        text = text[match.end() :]
    elif text.startswith("data:"):
        raise ImageError(f"{field}: data URLs must be base64-encoded (data:image/png;base64,...)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{field}: not valid base64") from None


def sniff(data: bytes) -> str | None:
    """The format named by the file's magic bytes, or None."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    return None


def describe_bytes(data: bytes) -> str:
    head = data[:256].lstrip().lower()
    if head.startswith(b"%pdf"):
        return "a PDF document"
    if head.startswith((b"<svg", b"<?xml")) or b"<svg" in head:
        return "an SVG/XML document"
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML document"
    return "not a PNG, JPEG, GIF, WebP or BMP image"


def open_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode an upload into a PIL image, refusing what is empty, hostile or too large."""
    if not data:
        raise ImageError(f"{field}: the image is empty (0 bytes)")
    kind = sniff(data)
    if kind is None:
        raise ImageError(f"{field}: {describe_bytes(data)}; send a PNG or JPEG", status=415)
    try:
        # Image.open reads only the header; our own limit (below PIL's bomb threshold) is
        # checked before any pixel is decoded. PIL raises DecompressionBombError itself for
        # headers beyond twice its threshold.
        img = Image.open(io.BytesIO(data), formats=[kind])
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(
                f"{field}: {width}x{height} is {width * height} pixels, more than the "
                f"limit of {max_pixels}; downscale it first",
                status=413,
            )
        if width < 1 or height < 1:
            raise ImageError(f"{field}: the image has no pixels")
        img.seek(0)  # first frame of an animation
        img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(
            f"{field}: {exc}; the limit here is {max_pixels} pixels", status=413
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{field}: the {kind} data is truncated or corrupt ({exc})") from None
    return img


def pad_to_square(img: Image.Image) -> Image.Image:
    width, height = img.size
    if width == height:
        return img
    arr = np.asarray(img)
    border = np.concatenate(
        [arr[0].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
         arr[-1].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
         arr[:, 0].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
         arr[:, -1].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1)]
    )  # fmt: skip
    fill = tuple(int(v) for v in np.median(border, axis=0))
    side = max(width, height)
    return ImageOps.pad(img, (side, side), color=fill[0] if img.mode == "L" else fill)


def ready_png_pixels(
    data: bytes, shape: tuple[int, int, int], max_pixels: int
) -> np.ndarray | None:
    """The pixels [H, W] or [H, W, 3] of a PNG that needs no conversion, or None.

    "Needs no conversion": 8-bit greyscale for a 1-channel model or 8-bit RGB for a
    3-channel one, not interlaced, already the model's size, every CRC right, no chunks
    beyond IHDR, IDAT, IEND and PNG_INERT_CHUNKS. Then the rule's steps 3 to 5 are no-ops
    and only the IDAT stream needs decoding, which PIL's own PNG decoder ("zip") does
    without ``Image.open``'s plugin and chunk machinery: half the time per upload, the
    largest single cost in the event loop's profile (bench/README.md). Everything else,
    every error included, returns None and goes through ``open_image``.
    """
    channels, side, _ = shape
    if not data.startswith(PNG_SIGNATURE):
        return None
    idat: list[bytes] = []
    pos, end, header, previous = 8, len(data), b"", b""
    while pos + 12 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        body_end = pos + 8 + length
        if body_end + 4 > end:
            return None
        (crc,) = struct.unpack_from(">I", data, body_end)
        if zlib.crc32(data[pos + 4 : body_end]) != crc:
            return None
        if kind == b"IHDR" and pos == 8 and length == 13:
            header = data[pos + 8 : body_end]
        elif kind == b"IDAT" and header and (not idat or previous == b"IDAT"):
            idat.append(data[pos + 8 : body_end])  # the IDAT chunks must be consecutive
        elif kind == b"IEND" and idat:
            break
        elif kind not in PNG_INERT_CHUNKS:
            return None
        pos, previous = body_end + 4, kind
    else:
        return None  # no IEND
    width, height, depth, color, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", header
    )
    wanted_color, mode = (0, "L") if channels == 1 else (2, "RGB")
    if (width, height) != (side, side) or side * side > max_pixels:
        return None
    if (depth, color, compression, filtering, interlace) != (8, wanted_color, 0, 0, 0):
        return None
    try:
        img = Image.frombytes(mode, (side, side), b"".join(idat), "zip", mode)
    except (ValueError, OSError):
        return None  # truncated or corrupt: open_image words the error
    return np.asarray(img, dtype=np.uint8)


def image_to_tensor(
    data: bytes, shape: tuple[int, int, int], field: str, max_pixels: int, invert: bool = False
) -> torch.Tensor:
    """Apply the conversion rule: bytes -> float tensor [1, C, H, W] in [0, 1]."""
    channels, side, _ = shape
    arr = ready_png_pixels(data, shape, max_pixels)
    if arr is None:
        img = pad_to_square(to_mode(open_image(data, field, max_pixels), channels))
        if img.size != (side, side):
            img = img.resize((side, side), Image.Resampling.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # [C, H, W]
    # In NumPy, then one torch call: the same IEEE float32 numbers as .float().div_(255)
    # and 1 - x, at a fraction of the cost of four torch ops per request (bench/README.md).
    x = arr[None].astype(np.float32)  # [1, C, H, W], a new array
    x /= 255
    if invert:
        np.subtract(1, x, out=x)
    return torch.from_numpy(x)


def png_bytes(x: torch.Tensor, compress_level: int = 0) -> bytes:
    """One image [C, H, W] or a grid of several [B, C, H, W] -> PNG bytes."""
    if x.ndim == 4 and len(x) > 1:
        return encode_png(np.asarray(make_grid(x)), compress_level)
    return encode_png(to_uint8(x.reshape(1, *x.shape[-3:]))[0], compress_level)


def grid_tensor(x: torch.Tensor) -> torch.Tensor:
    """Images [B, C, H, W] in [0, 1] -> one grid of them [C, H', W'] (``make_grid``'s), e.g.
    one frame of an animation of B chains."""
    arr = np.asarray(make_grid(x), dtype=np.float32) / 255  # [H', W'] or [H', W', 3]
    grid = torch.from_numpy(arr)
    return grid.unsqueeze(0) if grid.ndim == 2 else grid.permute(2, 0, 1)


def encode_png(arr: np.ndarray, compress_level: int = 0) -> bytes:
    """uint8 [H, W] or [H, W, C] (C = 1 or 3) -> an 8-bit greyscale or RGB PNG.

    Written directly from the PNG specification (W3C, "Portable Network Graphics (PNG)
    Specification", 3rd ed., 2025): a signature, IHDR, one zlib-format IDAT of scanlines
    that each start with filter byte 0 (None), and IEND. For the service's small images
    this takes about a tenth of the time of PIL's encoder, whose per-call overhead (plugin
    lookup, chunk callbacks) dominated the reply in the profile (bench/README.md). The
    stream is deflated by Intel's ISA-L (python-isal) at ``compress_level`` 0-3: level 0
    is 7x faster than zlib's level 1 on a 28x28 reply and an 8x8 grid of them, for
    output 12-28% larger; level 1 is about zlib's size.
    """
    if (
        arr.dtype != np.uint8
        or arr.ndim not in (2, 3)
        or (arr.ndim == 3 and arr.shape[2] not in (1, 3))
    ):
        raise ValueError(f"expected uint8 [H, W] or [H, W, 1|3], got {arr.dtype} {list(arr.shape)}")
    height, width = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    rows = np.empty((height, 1 + width * channels), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None on every scanline
    rows[:, 1:] = arr.reshape(height, width * channels)
    color_type = 0 if channels == 1 else 2  # greyscale or truecolour, 8 bits per sample
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", isal_zlib.compress(rows.tobytes(), compress_level)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def gif_bytes(
    frames: torch.Tensor, scale: int = 4, frame_ms: int = 80,
    encoder: GifProcess | None = None, pace: Callable[[], None] | None = None,
    bounce: bool = True,
) -> bytes:  # fmt: skip
    """Frames [T, C, H, W] in [0, 1] -> an animated GIF that plays forward then back
    (``bounce``), or forward only, looping (``gif_worker.encode_gif``): in ``encoder``'s
    child process if given, else here, calling ``pace`` between frames."""
    pixels = to_uint8(frames)  # uint8 [T, H, W, C]
    if encoder is not None:
        return encoder.encode(pixels, scale, frame_ms, pace, bounce)
    return encode_gif(pixels, scale, frame_ms, pace, bounce)
