"""The PNG fast path of the upload conversion gives exactly what the general path gives."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from service import imaging
from service.imaging import ImageError, encode_png, image_to_tensor, ready_png_pixels

LIMIT = 10**6


def pil_png(arr: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def split_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def join_chunks(parts: list[tuple[bytes, bytes]]) -> bytes:
    return imaging.PNG_SIGNATURE + b"".join(chunk(k, d) for k, d in parts)


def general_path(
    data: bytes, shape: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr(imaging, "ready_png_pixels", lambda *args: None)
        return image_to_tensor(data, shape, "image", LIMIT)


rng = np.random.default_rng(0)
SMOOTH = np.add.outer(np.arange(28), np.arange(28)).astype(np.uint8) * 4
NOISE = rng.integers(0, 256, (28, 28), dtype=np.uint8)
RGB = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("png", "shape"),
    [
        (pil_png(SMOOTH), (1, 28, 28)),  # PIL chooses per-row filters, Paeth among them
        (pil_png(NOISE, optimize=True), (1, 28, 28)),
        (pil_png(NOISE, compress_level=0), (1, 28, 28)),
        (encode_png(SMOOTH), (1, 28, 28)),  # our own replies, sent back
        (pil_png(RGB), (3, 16, 16)),
        (pil_png(SMOOTH, pnginfo=PngImagePlugin.PngInfo()), (1, 28, 28)),
    ],
)
def test_simple_pngs_take_the_fast_path_with_the_same_result(
    png: bytes, shape: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = ready_png_pixels(png, shape, LIMIT)
    assert pixels is not None
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(io.BytesIO(png))))
    fast = image_to_tensor(png, shape, "image", LIMIT)
    assert torch.equal(fast, general_path(png, shape, monkeypatch))
    assert torch.equal(image_to_tensor(png, shape, "image", LIMIT, invert=True), 1 - fast)


def test_inert_chunks_and_split_idat_still_take_the_fast_path() -> None:
    parts = split_chunks(pil_png(NOISE))
    (ihdr, (_, idat), iend) = parts
    text = (b"tEXt", b"Comment\x00drawn by hand")
    halves = [(b"IDAT", idat[:40]), (b"IDAT", idat[40:])]
    png = join_chunks([ihdr, text, (b"gAMA", struct.pack(">I", 45455)), *halves, iend])
    pixels = ready_png_pixels(png, (1, 28, 28), LIMIT)
    assert pixels is not None
    np.testing.assert_array_equal(pixels, NOISE)


@pytest.mark.parametrize(
    ("case", "png", "shape"),
    [
        ("other size", pil_png(SMOOTH), (1, 32, 32)),
        ("RGB for a greyscale model", pil_png(RGB), (1, 16, 16)),
        ("greyscale for an RGB model", pil_png(SMOOTH), (3, 28, 28)),
        ("transparency", pil_png(SMOOTH, transparency=0), (1, 28, 28)),
        ("palette", pil_png(SMOOTH, bits=4), (1, 28, 28)),
        ("16-bit", pil_png(SMOOTH.astype(np.uint16) * 257), (1, 28, 28)),
        ("not a PNG", b"\xff\xd8\xff" + b"\x00" * 40, (1, 28, 28)),
    ],
)
def test_images_that_need_converting_take_the_general_path(
    case: str, png: bytes, shape: tuple[int, int, int]
) -> None:
    assert ready_png_pixels(png, shape, LIMIT) is None, case
    if case != "not a PNG":  # the general path still converts it
        assert image_to_tensor(png, shape, "image", LIMIT).shape == (1, *shape)


def test_broken_pngs_fall_back_and_keep_their_error_messages() -> None:
    parts = split_chunks(pil_png(NOISE))  # noise: an IDAT of several hundred bytes
    ihdr, (_, idat), iend = parts
    bad_crc = bytearray(join_chunks(parts))
    bad_crc[8 + 25 + 10] ^= 0xFF  # a byte inside IDAT: its CRC no longer matches
    cases = {
        "bad CRC": bytes(bad_crc),
        "truncated stream": join_chunks([ihdr, (b"IDAT", idat[:300]), iend]),
        "no IEND": join_chunks([ihdr, (b"IDAT", idat)]),
        "IDAT before IHDR": join_chunks([(b"IDAT", idat), ihdr, iend]),
        "IDAT chunks apart": join_chunks(
            [ihdr, (b"IDAT", idat[:40]), (b"tEXt", b"a\x00b"), (b"IDAT", idat[40:]), iend]
        ),
        "cut short": join_chunks(parts)[:-20],
    }
    for case, png in cases.items():
        assert ready_png_pixels(png, (1, 28, 28), LIMIT) is None, case
    for case in ("bad CRC", "truncated stream"):
        with pytest.raises(ImageError, match="truncated or corrupt"):
            image_to_tensor(cases[case], (1, 28, 28), "image", LIMIT)


def test_the_pixel_limit_is_checked_before_decoding() -> None:
    png = pil_png(SMOOTH)
    assert ready_png_pixels(png, (1, 28, 28), 28 * 28 - 1) is None
    with pytest.raises(ImageError, match="more than the limit") as err:
        image_to_tensor(png, (1, 28, 28), "image", 28 * 28 - 1)
    assert err.value.status == 413


def test_to_pixels_rounds_half_to_even_clamps_and_zeroes_nan() -> None:
    from models.imaging import to_pixels, to_uint8

    x = torch.rand(5, 3, 8, 8) * 1.4 - 0.2  # beyond both ends too
    x[0, 0, 0, :6] = torch.tensor(
        [float("nan"), float("inf"), -float("inf"), 0.5 / 255, 1.5 / 255, 254.5 / 255]
    )  # NaN, infinities and halves (rounded to even)
    x[0, 0, 1, :3] = torch.tensor([0.5, 0.25, -0.0])  # 127.5 -> 128, 63.75 -> 64 exactly
    # an independent reference in NumPy: float32 products, rint (half to even), clip
    with np.errstate(over="ignore"):  # +-inf became +-max float, and x 255 overflows back
        scaled = np.nan_to_num(x.numpy(), nan=0.0) * np.float32(255)
    expected = np.clip(np.rint(scaled), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal(to_pixels(x).numpy(), expected)
    assert list(expected[0, 0, :6, 0]) == [0, 255, 0, 0, 2, 254]
    assert list(expected[0, 1, :3, 0]) == [128, 64, 0]
    assert np.array_equal(to_uint8(x.requires_grad_()), expected)


def test_replies_from_batch_pixels_match_the_float_images(client: TestClient) -> None:
    """JSON and single-image PNG replies come from pixels converted per batch (to_pixels);
    raw arrays and PNG grids from the float images (to_uint8). All agree."""
    import base64

    from models.imaging import to_uint8

    from .conftest import png

    def decoded(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)))

    for path, kwargs in [
        ("/v1/models/ae-t/reconstruct", {"files": {"image": png()}}),
        ("/v1/models/vae-t/generate", {"json": {"n": 3, "seed": 5}}),
        ("/v1/models/gan-t/decode", {"json": {"latent": [0.1, -0.2, 0.3, 0.0, 1.0]}}),
    ]:
        replies = {f: client.post(f"{path}?format={f}", **kwargs) for f in ("json", "png", "array")}
        assert [r.status_code for r in replies.values()] == [200] * 3, path
        reply, array = replies["json"].json(), replies["array"].json()
        urls = reply.get("images") or [reply["image"]]
        floats = torch.tensor(array.get("images") or [array["image"]])  # [n, C, H, W]
        expected = to_uint8(floats)  # [n, H, W, C]
        for url, want in zip(urls, expected, strict=True):
            got = decoded(base64.b64decode(url.split(",", 1)[1]))
            np.testing.assert_array_equal(got, want.squeeze(-1))
        png_pixels = decoded(replies["png"].content)
        if len(urls) == 1:
            np.testing.assert_array_equal(png_pixels, expected[0].squeeze(-1))
        else:  # a grid with a 2-pixel border: its first tile
            h, w = expected.shape[1:3]
            np.testing.assert_array_equal(png_pixels[2 : 2 + h, 2 : 2 + w], expected[0].squeeze(-1))
        assert reply["shape"] == [expected.shape[3], *expected.shape[1:3]]


def _gif_frames(data: bytes) -> np.ndarray:
    gif = Image.open(io.BytesIO(data))
    frames = []
    for index in range(gif.n_frames):
        gif.seek(index)
        frames.append(np.asarray(gif.convert("RGB")))
    return np.stack(frames)


def test_a_grey_gif_keeps_every_level_and_plays_forward_then_back() -> None:
    torch.manual_seed(0)
    frames = torch.rand(5, 1, 6, 7)
    decoded = _gif_frames(imaging.gif_bytes(frames, scale=2))
    assert decoded.shape == (5 + 3, 12, 14, 3)
    expected = imaging.to_uint8(frames)[..., 0].repeat(2, axis=1).repeat(2, axis=2)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:5, ..., channel], expected)
    np.testing.assert_array_equal(decoded[5:], decoded[1:4][::-1])


def test_a_chain_gif_plays_forward_only_and_holds_its_last_frame() -> None:
    from service.gif_worker import HOLD_MS, GifProcess

    frames = torch.rand(5, 1, 6, 7, generator=torch.Generator().manual_seed(1))
    data = imaging.gif_bytes(frames, scale=2, frame_ms=60, bounce=False)
    decoded = _gif_frames(data)
    assert decoded.shape == (5, 12, 14, 3)  # no way back
    expected = imaging.to_uint8(frames)[..., 0].repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_array_equal(decoded[..., 0], expected)
    gif = Image.open(io.BytesIO(data))
    durations = []
    for index in range(gif.n_frames):
        gif.seek(index)
        durations.append(gif.info["duration"])
    assert durations == [60, 60, 60, 60, HOLD_MS]
    gifs = GifProcess()  # the child process gets the flag through its framing
    try:
        assert gifs.encode(imaging.to_uint8(frames), 2, 60, bounce=False) == data
    finally:
        gifs.close()


def test_a_colour_gif_is_quantised_close_to_its_frames() -> None:
    frames = torch.zeros(3, 3, 4, 4)
    frames[0, 0] = 1.0  # red, then green, then blue: a palette holds them exactly
    frames[1, 1] = 1.0
    frames[2, 2] = 1.0
    decoded = _gif_frames(imaging.gif_bytes(frames, scale=1))
    assert decoded.shape == (3 + 1, 4, 4, 3)
    np.testing.assert_array_equal(decoded[:3], imaging.to_uint8(frames))


def test_the_gif_process_encodes_as_the_thread_would_and_recovers_from_a_kill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.gif_worker import GifProcess, encode_gif

    pixels = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 1), dtype=np.uint8)
    gifs = GifProcess()
    try:
        assert gifs.encode(pixels, 3, 50) == encode_gif(pixels, 3, 50)
        child = gifs._child
        assert child is not None
        child.kill()
        child.wait()
        assert gifs.encode(pixels, 2) == encode_gif(pixels, 2)  # a new child
        assert gifs._child is not child and gifs.fallbacks == 0

        def no_child() -> None:
            raise OSError("no processes left")

        gifs.close()
        monkeypatch.setattr(gifs, "_start", no_child)
        assert gifs.encode(pixels, 2) == encode_gif(pixels, 2)  # in this thread instead
        assert gifs.fallbacks == 1
    finally:
        gifs.close()
    with pytest.raises(ValueError, match="uint8"):
        gifs.encode(pixels.astype(np.float32), 2)
