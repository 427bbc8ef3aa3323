"""The batching engine: exact per-caller results, isolation of failures, bounded queue."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from service.batching import BatchEngine, EngineStopped, QueueFull

from .factories import tiny_model


def run(coro):
    return asyncio.run(coro)


def test_concurrent_results_equal_unbatched_results() -> None:
    ae, vae = tiny_model("ae"), tiny_model("vae", seed=4)
    inputs = [
        torch.rand(1 + i % 3, 1, 28, 28, generator=torch.Generator().manual_seed(i))
        for i in range(40)
    ]
    sizes: list[int] = []

    async def main():
        engine = BatchEngine(max_batch_size=16, on_batch=lambda key, rows, s: sizes.append(rows))
        await engine.start()
        calls = []
        for i, x in enumerate(inputs):  # mixed models and operations in flight at once
            if i % 3 == 0:
                calls.append(engine.run(ae.reconstruct, x))
            elif i % 3 == 1:
                calls.append(engine.run(vae.encode_distribution, x))
            else:
                calls.append(engine.run(ae.encode, x))
        out = await asyncio.gather(*calls)
        await engine.stop()
        return out

    results = run(main())
    with torch.inference_mode():
        for i, (x, got) in enumerate(zip(inputs, results, strict=True)):
            if i % 3 == 0:
                assert torch.allclose(got, ae.reconstruct(x), atol=1e-5)
            elif i % 3 == 1:
                mu, log_var = vae.encode_distribution(x)
                assert torch.allclose(got[0], mu, atol=1e-5) and torch.allclose(
                    got[1], log_var, atol=1e-5
                )
            else:
                assert torch.allclose(got, ae.encode(x), atol=1e-5)
    assert max(sizes) > 3, "requests were never batched together"
    assert max(sizes) <= 16 and sum(sizes) == sum(len(x) for x in inputs)


def test_a_failing_request_does_not_fail_its_batch_mates() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        if (x < 0).any():
            raise ValueError("negative input")
        return x * 2

    async def main():
        engine = BatchEngine(max_batch_size=64, max_wait_s=0.01)
        await engine.start()
        good = [torch.full((1, 2), float(i)) for i in range(5)]
        calls = [engine.run(fn, x) for x in good[:2]] + [engine.run(fn, torch.full((1, 2), -1.0))]
        calls += [engine.run(fn, x) for x in good[2:]]
        out = await asyncio.gather(*calls, return_exceptions=True)
        await engine.stop()
        return out

    out = run(main())
    assert isinstance(out[2], ValueError) and str(out[2]) == "negative input"
    for value, got in zip([0, 1, 2, 3, 4], out[:2] + out[3:], strict=True):
        assert torch.equal(got, torch.full((1, 2), 2.0 * value))


def test_full_queue_answers_at_once() -> None:
    gate, running = threading.Event(), threading.Event()

    def slow(x: torch.Tensor) -> torch.Tensor:
        running.set()
        gate.wait(30)
        return x

    async def main():
        engine = BatchEngine(max_batch_size=1, max_queue=2)
        await engine.start()
        first = asyncio.create_task(engine.run(slow, torch.zeros(1)))
        assert await asyncio.to_thread(running.wait, 30)  # the first is running
        queued = [asyncio.create_task(engine.run(slow, torch.zeros(1))) for _ in range(2)]
        while engine.depth < 2:  # both queued behind it (states, not a sleep of a guessed length)
            await asyncio.sleep(0.001)
        with pytest.raises(QueueFull):
            await engine.run(slow, torch.zeros(1))
        gate.set()
        await asyncio.gather(first, *queued)
        await engine.stop()
        with pytest.raises(EngineStopped):
            await engine.run(slow, torch.zeros(1))

    run(main())


def test_stop_finishes_queued_work() -> None:
    async def main():
        engine = BatchEngine(max_batch_size=4)
        await engine.start()

        def plus_one(x: torch.Tensor) -> torch.Tensor:
            return x + 1

        tasks = [asyncio.create_task(engine.run(plus_one, torch.zeros(1))) for _ in range(20)]
        await asyncio.sleep(0)
        await engine.stop()
        return await asyncio.gather(*tasks)

    assert all(float(t) == 1.0 for t in run(main()))


def test_oversized_request_runs_alone() -> None:
    seen: list[int] = []

    async def main():
        engine = BatchEngine(max_batch_size=4, on_batch=lambda k, rows, s: seen.append(rows))
        await engine.start()
        same = torch.clone  # one call for both: they could share a batch, but 10 > 4 rows
        out = await asyncio.gather(
            engine.run(same, torch.zeros(10, 1)), engine.run(same, torch.zeros(2, 1))
        )
        await engine.stop()
        return out

    big, small = run(main())
    assert big.shape == (10, 1) and small.shape == (2, 1)
    assert sorted(seen) == [2, 10] or seen == [10, 2]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size and max_queue must be >= 1"):
        BatchEngine(max_batch_size=0)


def test_batches_keep_arrival_order_per_key_and_cut_at_max_rows() -> None:
    from service.batching import _Item

    engine = BatchEngine(max_batch_size=4)
    calls = {"a": torch.abs, "b": torch.neg}  # each call is its own key
    names = {fn: name for name, fn in calls.items()}
    sizes = [("a", 1), ("b", 3), ("a", 2), ("a", 1), ("b", 2), ("a", 1), ("a", 6), ("a", 1)]
    engine._pending.extend(_Item(calls[key], torch.zeros(n, 1), None) for key, n in sizes)  # type: ignore[arg-type]
    batches = []
    while engine._pending:
        batches.append([(names[it.call], len(it.x)) for it in engine._next_batch()])
    assert batches == [
        [("a", 1), ("a", 2), ("a", 1)],  # 4 rows: full
        [("b", 3)],  # the oldest request now; b 2 does not fit beside it
        [("b", 2)],
        [("a", 1)],  # the 6-row request does not fit beside it
        [("a", 6)],  # larger than max_batch_size: runs alone
        [("a", 1)],
    ]


def test_a_large_call_runs_in_slices_that_give_way_to_the_other_lane() -> None:
    vae = tiny_model("vae", seed=2)
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    rows_seen: list[int] = []

    def encode(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows_seen.append(len(batch))
        return vae.encode_distribution(batch)

    cheap = BatchEngine()
    cheap._busy = True  # the cheap lane has work for the whole call
    expensive = BatchEngine(name="expensive", yield_to=cheap, pause_s=0.002, slice_rows=4)

    async def main():
        await expensive.start()
        out = await expensive.run(encode, x)
        await expensive.stop()
        return out

    mu, log_var = run(main())
    assert rows_seen == [4, 4, 2]  # three slices, two boundaries between them
    with torch.inference_mode():
        want_mu, want_log_var = vae.encode_distribution(x)
    torch.testing.assert_close(mu, want_mu, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(log_var, want_log_var, atol=1e-5, rtol=1e-4)
    assert expensive.paused_s >= 2 * 0.002  # it waited at each boundary while the cheap lane worked
    cheap._busy = False
    before = expensive.paused_s
    expensive.give_way()  # nothing to give way to: no pause
    assert expensive.paused_s == before


def test_a_search_gives_way_at_every_step() -> None:
    from models import SearchBudget
    from service.batching import should_stop

    gan = tiny_model("gan")
    cheap = BatchEngine()
    cheap._busy = True
    expensive = BatchEngine(name="expensive", yield_to=cheap, pause_s=0.001)

    def search(batch: torch.Tensor) -> torch.Tensor:
        return gan.find_latent(batch, SearchBudget(steps=5, restarts=1, stop=should_stop))[0]

    async def main():
        await expensive.start()
        out = await expensive.run(search, torch.rand(1, 1, 28, 28))
        await expensive.stop()
        return out

    assert run(main()).shape == (1, gan.latent_dim)
    assert expensive.paused_s >= 5 * 0.001  # one pause per step


def test_a_lane_that_trims_hands_memory_back_once_it_has_been_idle(monkeypatch) -> None:
    """``trim_after_idle_s`` (the expensive lane): batches back to back never trim (a trim
    costs the next call its page faults); once the lane has been idle that long after
    batches that grew the process by more than TRIM_GROWTH_BYTES, the freed heap goes back
    (memory.return_freed_memory), once. Batches that grow nothing, or a lane without the
    setting, never trim."""
    import service.batching as batching

    trims: list[float] = []
    resident = [1 << 30]
    monkeypatch.setattr(batching, "return_freed_memory", lambda: trims.append(time.monotonic()))
    monkeypatch.setattr(batching, "resident_bytes", lambda: resident[0])
    release = threading.Event()

    async def main(trim_after: float | None, growth: int) -> None:
        def slow(x: torch.Tensor) -> torch.Tensor:
            release.wait(5)
            resident[0] += growth
            return x + 1

        engine = BatchEngine(max_batch_size=4, trim_after_idle_s=trim_after)
        await engine.start()
        first = asyncio.ensure_future(engine.run(slow, torch.zeros(4, 1)))
        await asyncio.sleep(0.05)  # the first batch is running; two more queue behind it
        rest = [asyncio.ensure_future(engine.run(slow, torch.zeros(4, 1))) for _ in range(2)]
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(first, *rest)
        done = time.monotonic()
        for _ in range(100):  # wait for a trim, or half a second where none may come
            if trims or (time.monotonic() - done > 0.5 and (trim_after is None or not growth)):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # and a while more: still at most one trim
        await engine.stop()
        release.clear()

    grows = batching.TRIM_GROWTH_BYTES // 2 + 1  # two batches pass the threshold
    run(main(None, grows))
    assert trims == []
    run(main(0.1, 0))
    assert trims == []
    run(main(0.1, grows))
    assert len(trims) == 1  # three batches back to back, then one idle spell
