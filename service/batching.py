"""Dynamic batching: concurrent requests for the same model and operation share one forward pass.

Request handlers call ``await engine.run(call, x)``, which queues the request and awaits a
future. ``call`` is a hashable callable that is its own batching key (inference.ModelCall:
model, method, output form): two requests are batch-mates exactly when their calls are
equal, so a key can never stand for two different functions. One dedicated inference thread
takes the oldest request and every queued request with an equal call behind it, up to
``max_batch_size`` rows, runs them as one call, and hands the results back to the event loop, which never
blocks on torch. While a batch runs, new requests queue up and form the next batch: under
load, batches form without any waiting; a lone request waits up to ``max_wait`` for company.

Guarantees: each caller gets exactly the rows it sent (results are split by row counts);
if a batch raises, each of its items is retried alone, so one bad request never fails its
batch-mates; the queue is bounded and a full queue raises ``QueueFull`` at once.

Nothing is computed for nobody: a request whose caller went away (its future cancelled) is
dropped when its batch forms, and one whose deadline has passed gets ``DeadlineExceeded``
instead of a place in a batch. A long call (a search) asks ``should_stop()`` between its steps:
true once every request of its batch is gone or past its deadline.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .memory import resident_bytes, return_freed_memory

log = logging.getLogger("latentserve.batching")
TRIM_GROWTH_BYTES = 32 << 20  # growth since the last trim that makes an idle lane trim
GROWTH_CHECK_EVERY_S = 0.1  # a lane with work queued reads its size (10 us) at most this often
Output = torch.Tensor | tuple[torch.Tensor, ...]
BatchFn = Callable[[torch.Tensor], Output]  # hashable, and equal only to calls that do the same


class QueueFull(Exception):
    """The inference queue is at its bound; the caller should retry later."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no new work."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its work could finish; nothing more is done."""


_running = threading.local()  # the batch the current inference thread is running


def lower_priority(nice: int, what: str) -> None:
    """Add ``nice`` to the calling thread's nice value (Linux: each thread is a task of its own)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError) as exc:
        log.warning("%s keeps its priority: %s", what, exc)


def should_stop() -> bool:
    """For a long call on an inference thread, at the end of each of its steps (a slice
    boundary): first give way to the lane this one yields to (``BatchEngine.yield_to``), then
    say whether everyone its batch was for is gone (cancelled or past the deadline). False
    outside a batch."""
    engine = getattr(_running, "engine", None)
    if engine is not None:
        engine.give_way()
    check = getattr(_running, "check", None)
    return bool(check and check())


@dataclasses.dataclass
class _Item:
    call: BatchFn  # also the batching key
    x: torch.Tensor
    future: asyncio.Future[Output]
    deadline: float | None = None  # time.monotonic() by which the result must be back

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


def split_rows(out: Output, sizes: Sequence[int]) -> list[Output]:
    """Split a batched output back into per-caller pieces by row counts."""
    if isinstance(out, torch.Tensor):
        return list(out.split(list(sizes)))
    parts = [t.split(list(sizes)) for t in out]
    return [tuple(p[i] for p in parts) for i in range(len(sizes))]


def join_rows(parts: Sequence[Output]) -> Output:
    """The inverse of ``split_rows``: outputs of consecutive row ranges -> one output."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)  # type: ignore[arg-type]
    return tuple(torch.cat(columns) for columns in zip(*parts, strict=True))


class BatchEngine:
    def __init__(
        self,
        max_batch_size: int = 64,
        max_wait_s: float = 0.0,
        max_queue: int = 2048,
        torch_threads: int = 1,
        on_batch: Callable[[BatchFn, int, float], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
        name: str = "inference",
        nice: int = 0,
        yield_to: BatchEngine | None = None,
        pause_s: float = 0.0,
        slice_rows: int | None = None,
        trim_after_idle_s: float | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_s >= 0")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.torch_threads = torch_threads
        self.on_batch = on_batch
        self.on_drop = on_drop  # "cancelled" or "deadline", once per request dropped
        self.name = name
        self.nice = nice  # added to this thread's nice value (Linux): a lower-priority lane
        # cooperative priority: at each slice boundary (a search's step; a chunk of
        # ``slice_rows`` rows of a larger call) this lane waits up to ``pause_s`` while
        # ``yield_to`` has work, so its CPU and the interpreter lock go to that lane first
        self.yield_to = yield_to
        self.pause_s = pause_s
        self.slice_rows = slice_rows
        # hand the heap's free pages back (memory.py) once the lane has been idle this long
        # after batches that grew the process by TRIM_GROWTH_BYTES: large calls (generate
        # n=64, sampling, batches of 64) leave freed heap behind. Not after every batch: a
        # trim costs the next call its page faults (measured: +4 ms on a 50 ms GAN
        # inversion), so a busy lane never trims and calls that grow nothing do not either.
        self.trim_after_idle_s = trim_after_idle_s
        self._heap_dirty = False  # the process grew since the last trim
        self._resident_after_trim = resident_bytes() or 0
        self._growth_checked = 0.0  # when a busy lane last read its size
        self.paused_s = 0.0  # total time given way, for /metrics and the benchmarks
        self._paused_lock = threading.Lock()  # the lane's thread and the reply encoder's add
        self._pending: collections.deque[_Item] = collections.deque()
        self._ready = threading.Condition()  # guards _pending and _stopping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._busy = False
        self._last_batch_end = -math.inf  # time.perf_counter() when the last batch finished

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def busy(self) -> bool:
        """A batch is running on the inference thread now."""
        return self._busy

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish everything already queued, then stop the inference thread.

        The thread drains the queue before it returns, and each result reaches the event
        loop before the join does. Nothing is cancelled, so no accepted request is dropped.
        """
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def run(
        self,
        call: BatchFn,
        x: torch.Tensor,
        deadline: float | None = None,
        cancel_when: Callable[[Callable[[], Any]], None] | None = None,
    ) -> Output:
        """Queue ``x`` [n, ...] for ``call`` and wait for its n rows of output, by ``deadline``
        (``time.monotonic()``) if given. If the caller is cancelled while it waits (its client
        went away), the request is dropped and a running search stops at its next step;
        ``cancel_when(fn)`` registers ``fn`` to run when the caller goes away."""
        if self._thread is None or self._loop is None or self._stopping:
            raise EngineStopped("the service is shutting down")
        if deadline is not None and time.monotonic() > deadline:
            self._dropped("deadline")
            raise DeadlineExceeded("the deadline passed before the request was queued")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are queued")
        future: asyncio.Future[Output] = self._loop.create_future()
        with self._ready:
            self._pending.append(_Item(call, x, future, deadline))
            self._ready.notify()
        if cancel_when is not None:
            cancel_when(future.cancel)
        try:
            return await future
        except asyncio.CancelledError:
            future.cancel()  # the inference thread skips it, or a running search stops
            self._dropped("cancelled")
            raise

    @property
    def has_work(self) -> bool:
        """Requests queued or a batch running."""
        return self._busy or bool(self._pending)

    def active_within(self, window_s: float) -> bool:
        """Work queued or running, or a batch finished less than ``window_s`` ago: under
        load the queue is empty for moments between batches, while the event loop parses
        the next requests."""
        return self.has_work or time.perf_counter() - self._last_batch_end < window_s

    def give_way(self) -> None:
        """On this lane's thread, at a slice boundary: sleep (releasing the interpreter lock)
        for ``pause_s`` while the lane it yields to is active (``active_within(pause_s)``),
        less if that lane falls idle."""
        other = self.yield_to
        if other is None or not self.pause_s or not other.active_within(self.pause_s):
            return
        started = time.perf_counter()
        end = started + self.pause_s
        while other.active_within(self.pause_s) and time.perf_counter() < end:
            time.sleep(0.0005)
        with self._paused_lock:
            self.paused_s += time.perf_counter() - started

    def pacer(self) -> Callable[[], None]:
        """For this lane's work on another thread (a GIF or a large reply being encoded),
        called often: gives way (``give_way``) once ``pause_s`` of work has passed since it
        last did, so that work gets at most about half the interpreter lock while the lane
        this one yields to has work, as a search does with its steps."""
        last = time.perf_counter()

        def pace() -> None:
            nonlocal last
            if time.perf_counter() - last >= self.pause_s:
                self.give_way()
                last = time.perf_counter()

        return pace

    def _dropped(self, reason: str) -> None:
        if self.on_drop:
            self.on_drop(reason)

    def _serve(self) -> None:
        """The inference thread: take a batch, run it, hand the results to the event loop.

        The thread takes its next batch itself as soon as it is free, rather than waiting
        for a task on the event loop to hand it one: under load the loop is busy parsing
        requests and rendering replies, and that hand-over left the thread idle about a
        third of the time with one worker (bench/README.md).
        """
        torch.set_num_threads(self.torch_threads)
        if self.nice:
            lower_priority(self.nice, f"the {self.name} lane")
        _running.engine = self
        while True:
            if self._wait_for_work():
                return_freed_memory()  # idle since the last batch; callers may queue meanwhile
                self._resident_after_trim = resident_bytes() or 0
                continue
            with self._ready:
                if not self._pending:
                    return  # stopping, and everything queued has run
                if self.max_wait_s and len(self._pending) == 1:  # a lone request waits for company
                    deadline = time.monotonic() + self.max_wait_s
                    while not self._stopping and len(self._pending) < self.max_batch_size:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._ready.wait(left)
                batch = self._next_batch()
            live = self._still_wanted(batch)
            if live:
                _running.check = functools.partial(self._nobody_waits, live)
                self._busy = True
                try:
                    results = self._execute(live)
                finally:
                    _running.check = None
                    self._busy = False
                    self._last_batch_end = time.perf_counter()
                now = time.monotonic()
                late = DeadlineExceeded("the deadline passed while the request was running")
                self._deliver(
                    live,
                    [late if it.expired(now) else r for it, r in zip(live, results, strict=True)],
                )
                if (
                    self.trim_after_idle_s is not None
                    and not self._heap_dirty
                    # under load at most every GROWTH_CHECK_EVERY_S; always before idling
                    and (now - self._growth_checked > GROWTH_CHECK_EVERY_S or not self._pending)
                ):
                    self._growth_checked = now
                    resident = resident_bytes()
                    self._heap_dirty = (
                        resident is not None
                        and resident - self._resident_after_trim > TRIM_GROWTH_BYTES
                    )

    def _wait_for_work(self) -> bool:
        """Block until a request is queued or the lane stops; True instead when the lane has
        been idle ``trim_after_idle_s`` since its last batch (time to trim the heap)."""
        with self._ready:
            while not self._pending and not self._stopping:
                if not self._heap_dirty or self.trim_after_idle_s is None:
                    self._ready.wait()
                elif not self._ready.wait(self.trim_after_idle_s) and not self._pending:
                    self._heap_dirty = False
                    return True
            return False

    def _still_wanted(self, batch: list[_Item]) -> list[_Item]:
        """The batch without callers that left (cancelled), and with those past their
        deadline answered ``DeadlineExceeded`` instead of run."""
        now = time.monotonic()
        expired = [it for it in batch if not it.future.done() and it.expired(now)]
        if expired:
            for _ in expired:  # counted before the answer leaves: a reader of /metrics sees it
                self._dropped("deadline")
            late = DeadlineExceeded("the deadline passed while the request was queued")
            self._deliver(expired, [late] * len(expired))
        return [it for it in batch if not it.future.done() and not it.expired(now)]

    @staticmethod
    def _nobody_waits(items: list[_Item]) -> bool:
        now = time.monotonic()
        return all(it.future.done() or it.expired(now) for it in items)

    def _next_batch(self) -> list[_Item]:
        """With the lock held and the queue not empty: the oldest request and the queued
        requests with an equal call after it, in arrival order, up to max_batch_size rows (a
        request larger than that runs alone). Other keys keep their places."""
        first = self._pending.popleft()
        batch, rows, passed = [first], len(first.x), []
        while self._pending and rows < self.max_batch_size:
            item = self._pending.popleft()
            if item.call != first.call:
                passed.append(item)
            elif rows + len(item.x) > self.max_batch_size:
                passed.append(item)  # the next batch starts with it
                break
            else:
                batch.append(item)
                rows += len(item.x)
        self._pending.extendleft(reversed(passed))
        return batch

    def _deliver(self, items: list[_Item], results: list[Output | BaseException]) -> None:
        def settle() -> None:  # on the event loop
            for item, result in zip(items, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.warning("event loop closed; %d results dropped", len(items))

    def _sliced(self, call: BatchFn, x: torch.Tensor) -> Output:
        """``call(x)``, in chunks of ``slice_rows`` rows with a slice boundary between them
        (rows are independent: the declaration's contract), when x has more rows."""
        n = self.slice_rows
        if n is None or len(x) <= n:
            return call(x)
        parts = []
        for start in range(0, len(x), n):
            if start:
                self.give_way()
            parts.append(call(x[start : start + n]))
        return join_rows(parts)

    def _execute(self, group: list[_Item]) -> list[Output | BaseException]:
        """Runs on the inference thread."""
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                x = group[0].x if len(group) == 1 else torch.cat([it.x for it in group])
                out = self._sliced(group[0].call, x)
            results: list[Output | BaseException] = list(
                split_rows(out, [len(it.x) for it in group])
            )
        except Exception as exc:
            if len(group) == 1:
                results = [exc]
            else:  # isolate the culprit: rerun each caller alone
                log.warning("batch of %d failed (%s); retrying each request alone", len(group), exc)
                results = [r for it in group for r in self._execute([it])]
                return results
        if self.on_batch:
            self.on_batch(
                group[0].call, sum(len(it.x) for it in group), time.perf_counter() - started
            )
        return results
