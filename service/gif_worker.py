"""Animated GIFs, encoded in a child process of their own.

Pillow's GIF writer holds the interpreter lock for all of its work, the LZW encoding in C
included: 40 ms for a 64-step interpolation (126 frames of 112x112), during which the
service's event loop and cheap inference thread could not run. Two clients looping such GIFs
cut a cheap model's throughput beside them to 44% of its figure alone (bench.isolation). In
a child process the encoding takes a CPU, not the lock, and at the expensive lane's lower
priority.

The child is ``python -m service.gif_worker --nice N``: it imports numpy and Pillow only
(no torch), reads requests from stdin and writes GIFs to stdout, with a fixed binary framing
(nothing is pickled):

    request:  7 big-endian uint32 (frames, height, width, channels, scale, frame_ms, bounce),
              then frames * height * width * channels bytes of pixels, uint8 [T, H, W, C]
    reply:    1 big-endian uint32 (length), then the GIF

It exits when stdin closes. ``GifProcess`` starts it on first use and starts it again after it
died; where it cannot run, GIFs are encoded in the calling thread instead (logged).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np
from PIL import Image

log = logging.getLogger("latentserve")

HEADER = struct.Struct(">7I")
#: how long a GIF that plays forward only (a Markov chain's run) shows its last frame
HOLD_MS = 1500
LENGTH = struct.Struct(">I")
GREY_PALETTE = bytes(v for level in range(256) for v in (level, level, level))
MAX_PIXELS = 1 << 28  # a request the child refuses: nothing the service sends comes close


def encode_gif(
    pixels: np.ndarray, scale: int = 4, frame_ms: int = 80,
    pace: Callable[[], None] | None = None, bounce: bool = True,
) -> bytes:  # fmt: skip
    """uint8 frames [T, H, W, C] (C = 1 or 3) -> an animated GIF that plays forward then
    back (``bounce``: an interpolation's walk there and back), or forward only with the last
    frame held ``HOLD_MS`` (a chain's run from noise to its samples), looping, each frame
    ``scale`` times larger (nearest neighbour).

    Grey frames go in as palette images on the identity grey palette, so every grey level is
    kept exactly and Pillow has no palette to fit; ``optimize=False`` skips its per-frame
    search for unused palette entries, pure Python that took about 60 of the 100 ms a 64-step
    GIF took (the file grows about 7%). Colour frames are quantised by Pillow. ``pace``, if
    given, is called between frames and between writes (``BatchEngine.pacer``).
    """
    _check(pixels, scale)
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    if pixels.shape[3] == 1:
        images = [Image.frombytes("P", (p.shape[1], p.shape[0]), p.tobytes()) for p in pixels]
        for im in images:
            im.putpalette(GREY_PALETTE)
    else:
        images = [Image.fromarray(p) for p in pixels]
    sequence = images + images[-2:0:-1] if bounce else images
    duration: int | list[int] = frame_ms
    if not bounce and len(images) > 1:
        duration = [frame_ms] * (len(images) - 1) + [max(frame_ms, HOLD_MS)]
    buffer = _PacedBuffer(pace) if pace else io.BytesIO()
    sequence[0].save(
        buffer, format="GIF", save_all=True, append_images=_paced(sequence[1:], pace),
        duration=duration, loop=0, optimize=False,
    )  # fmt: skip
    return buffer.getvalue()


def _check(pixels: np.ndarray, scale: int) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[3] not in (1, 3):
        raise ValueError(
            f"frames must be uint8 [T, H, W, 1 or 3], not {pixels.dtype} {pixels.shape}"
        )
    if len(pixels) == 0 or scale < 1:
        raise ValueError("a GIF needs at least one frame and a scale of at least 1")


class _PacedBuffer(io.BytesIO):
    """A buffer that calls ``pace()`` before each write: Pillow writes frame by frame."""

    def __init__(self, pace: Callable[[], None]) -> None:
        super().__init__()
        self.pace = pace

    def write(self, data: Any) -> int:
        self.pace()
        return super().write(data)


def _paced(images: list[Image.Image], pace: Callable[[], None] | None) -> Iterator[Image.Image]:
    """The images, with ``pace()`` before each: Pillow compares each frame with the last
    before it writes any."""
    for image in images:
        if pace:
            pace()
        yield image


class GifProcess:
    """The parent's end: ``encode`` sends frames to the child and returns its GIF. One
    request at a time (a lock); thread-safe."""

    def __init__(self, nice: int = 0) -> None:
        self.nice = nice
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.fallbacks = 0  # GIFs encoded in the calling thread because the child failed

    def encode(
        self, pixels: np.ndarray, scale: int = 4, frame_ms: int = 80,
        pace: Callable[[], None] | None = None, bounce: bool = True,
    ) -> bytes:  # fmt: skip
        """``encode_gif`` in the child; if the child cannot be started or dies twice in a
        row, in this thread (with ``pace``)."""
        _check(pixels, scale)
        pixels = np.ascontiguousarray(pixels)
        request = HEADER.pack(*pixels.shape, scale, frame_ms, int(bounce)) + pixels.tobytes()
        with self._lock:
            for _attempt in range(2):
                try:
                    return self._exchange(request)
                except (OSError, EOFError, ValueError) as exc:
                    log.warning("the GIF encoder process failed (%s); starting it again", exc)
                    self._stop_child()
        self.fallbacks += 1
        log.warning("encoding a GIF in the serving process: its encoder process does not run")
        return encode_gif(pixels, scale, frame_ms, pace, bounce)

    def _exchange(self, request: bytes) -> bytes:
        child = self._running_child()
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(request)
        child.stdin.flush()
        (length,) = LENGTH.unpack(_read_exactly(child.stdout, LENGTH.size))
        if length == 0:
            raise ValueError("the child refused the request")
        return _read_exactly(child.stdout, length)

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "service.gif_worker", "--nice", str(self.nice)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip

    def _running_child(self) -> subprocess.Popen[bytes]:
        """The child, started first if it is not running (with the lock held)."""
        if self._child is None or self._child.poll() is not None:
            self._child = self._start()
        return self._child

    def start(self) -> None:
        """Start the child now (at service start), so the first GIF does not wait for it."""
        with self._lock:
            try:
                self._running_child()
            except OSError as exc:
                log.warning("the GIF encoder process does not start (%s)", exc)

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def close(self) -> None:
        """Stop the child: it exits when its stdin closes."""
        with self._lock:
            self._stop_child()


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EOFError(
            f"the GIF encoder process closed its output ({len(data or b'')} of {n} bytes)"
        )
    return data


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The child's loop: one request in, one GIF (or a zero length, for a request it
    refuses) out, until stdin closes."""
    while True:
        header = stdin.read(HEADER.size)
        if len(header) < HEADER.size:
            return  # the parent closed the pipe
        frames, height, width, channels, scale, frame_ms, bounce = HEADER.unpack(header)
        size = frames * height * width * channels
        if size > MAX_PIXELS or frames * height * width * scale * scale > MAX_PIXELS:
            stdout.write(LENGTH.pack(0))
            stdout.flush()
            return  # the stream can't be trusted past a request like this
        pixels = np.frombuffer(_read_exactly(stdin, size), np.uint8)
        try:
            frames_in = pixels.reshape(frames, height, width, channels)
            gif = encode_gif(frames_in, scale, frame_ms, bounce=bool(bounce))
        except ValueError as exc:
            print(f"gif_worker: {exc}", file=sys.stderr)
            gif = b""
        stdout.write(LENGTH.pack(len(gif)) + gif)
        stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.gif_worker", description=__doc__)
    parser.add_argument("--nice", type=int, default=0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the parent decides
    if args.nice:
        os.nice(args.nice)
    serve(sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
