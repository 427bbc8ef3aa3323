"""Dynamic batching: concurrent requests for the same model and operation share one forward pass.

Request handlers call ``await engine.run(key, fn, x)``. A single collector task takes the
first waiting item, gathers everything else already queued (waiting up to ``max_wait`` for
company when the queue is empty), groups the items by key, and runs each group as one call
of ``fn`` on one dedicated inference thread, so the event loop never blocks on torch.
While a batch runs, new requests queue up and form the next batch: under load, batches
form without any waiting.

Guarantees: each caller gets exactly the rows it sent (results are split by row counts);
if a batch raises, each of its items is retried alone, so one bad request never fails its
batch-mates; the queue is bounded and a full queue raises ``QueueFull`` at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable, Hashable, Sequence

import torch

log = logging.getLogger("latentserve.batching")
Output = torch.Tensor | tuple[torch.Tensor, ...]
BatchFn = Callable[[torch.Tensor], Output]


class QueueFull(Exception):
    """The inference queue is at its bound; the caller should retry later."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no new work."""


@dataclasses.dataclass
class _Item:
    key: Hashable
    fn: BatchFn
    x: torch.Tensor
    future: asyncio.Future[Output]


def split_rows(out: Output, sizes: Sequence[int]) -> list[Output]:
    """Split a batched output back into per-caller pieces by row counts."""
    if isinstance(out, torch.Tensor):
        return list(out.split(list(sizes)))
    parts = [t.split(list(sizes)) for t in out]
    return [tuple(p[i] for p in parts) for i in range(len(sizes))]


class BatchEngine:
    def __init__(
        self,
        max_batch_size: int = 64,
        max_wait_s: float = 0.0,
        max_queue: int = 2048,
        torch_threads: int = 1,
        on_batch: Callable[[Hashable, int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_s >= 0")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.torch_threads = torch_threads
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._stopping = False

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._stopping = False
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="inference", initializer=torch.set_num_threads,
            initargs=(self.torch_threads,),
        )  # fmt: skip
        self._task = asyncio.create_task(self._collect(), name="batch-collector")

    async def stop(self) -> None:
        """Finish everything already queued, then stop the collector and the thread.

        A sentinel goes to the back of the queue; the collector drains what is ahead of it
        and returns. Nothing is cancelled, so no accepted request is dropped.
        """
        self._stopping = True
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(None)
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def run(self, key: Hashable, fn: BatchFn, x: torch.Tensor) -> Output:
        """Queue ``x`` [n, ...] for ``fn`` and wait for its n rows of output."""
        if self._queue is None or self._stopping:
            raise EngineStopped("the service is shutting down")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests are queued")
        future: asyncio.Future[Output] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(key, fn, x, future))
        return await future

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                return
            items = [first]
            if self.max_wait_s and self._queue.empty():
                await asyncio.sleep(self.max_wait_s)
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True  # run what was queued before the sentinel, then return
                    break
                items.append(item)
            for group in self._groups(items):
                live = [it for it in group if not it.future.done()]  # skip cancelled callers
                if not live:
                    continue
                results = await loop.run_in_executor(self._executor, self._execute, live)
                for item, result in zip(live, results, strict=True):
                    if item.future.done():
                        continue
                    if isinstance(result, BaseException):
                        item.future.set_exception(result)
                    else:
                        item.future.set_result(result)

    def _groups(self, items: list[_Item]) -> list[list[_Item]]:
        """Same-key items in arrival order, cut so a group holds at most max_batch_size rows
        (a single request larger than that runs alone)."""
        by_key: dict[Hashable, list[list[_Item]]] = {}
        rows: dict[Hashable, int] = {}  # rows in each key's last chunk
        for item in items:
            chunks = by_key.setdefault(item.key, [[]])
            n = len(item.x)
            if chunks[-1] and rows[item.key] + n > self.max_batch_size:
                chunks.append([])
                rows[item.key] = 0
            chunks[-1].append(item)
            rows[item.key] = rows.get(item.key, 0) + n
        return [chunk for chunks in by_key.values() for chunk in chunks]

    def _execute(self, group: list[_Item]) -> list[Output | BaseException]:
        """Runs on the inference thread."""
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                x = group[0].x if len(group) == 1 else torch.cat([it.x for it in group])
                out = group[0].fn(x)
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
                group[0].key, sum(len(it.x) for it in group), time.perf_counter() - started
            )
        return results
