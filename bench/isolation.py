"""Isolation: cheap requests beside expensive ones, and after abandoned ones.

    python -m bench.isolation                  # the shipped weights, default settings, 1 worker
    python -m bench.isolation --seconds 8 --workers 2

1. ``ae-fashion`` reconstruct (JSON) from 8 clients (wrk) alone, then beside 2 clients that
   loop an expensive request: ``gan-fashion`` encode (GAN inversion by optimisation, ~1-3 s
   each, and amortised, ~40 ms each), ``generate`` n=256, and a 64-step GIF interpolation.
   Each row is compared with the mean of the cheap runs alone just before and after it.
   Targets: at least 70% of the throughput alone, p99 at most 3x.
2. Four ``gan-fashion`` encodes (by optimisation) whose clients give up after 0.3 s, then one cheap reconstruct:
   it should be answered within 50 ms of its usual latency (nothing is computed for nobody).

Prints a table and writes ``bench/results/isolation.md``. Not a test: figures, not verdicts.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from .__main__ import RESULTS, ROOT, bodies, free_port, server, wrk

CLIENTS = 8
EXPENSIVE = {
    "gan-fashion encode (optimisation)": ("/v1/models/gan-fashion/encode?inversion=optimisation", "png", {}),
    "gan-fashion encode (amortised)": ("/v1/models/gan-fashion/encode?inversion=amortised", "png", {}),
    "gan-fashion generate n=256": ("/v1/models/gan-fashion/generate", "json", {"n": 256, "seed": 1}),
    "vae-fashion 64-step GIF": (
        "/v1/models/vae-fashion/interpolate?format=gif", "json", {"seed_a": 1, "seed_b": 2, "steps": 64},
    ),
}  # fmt: skip


@contextlib.contextmanager
def looping(
    base: str, path: str, kind: str, body: dict, png: bytes, n: int = 2
) -> Iterator[list[int]]:
    """n clients looping one request until the block ends; yields their status codes."""
    stop, statuses = threading.Event(), []

    def loop() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                if kind == "png":
                    r = client.post(base + path, content=png, headers={"content-type": "image/png"})
                else:
                    r = client.post(base + path, json=body)
                statuses.append(r.status_code)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the expensive work is under way before measuring
    try:
        yield statuses
    finally:
        stop.set()
        for t in threads:
            t.join(150)


def latency_ms(base: str, png: bytes, n: int = 20) -> float:
    """Median of n sequential cheap requests."""
    times = []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            started = time.perf_counter()
            r = client.post(f"{base}/v1/models/ae-fashion/reconstruct", content=png,
                            headers={"content-type": "image/png"})  # fmt: skip
            r.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    files = bodies(tmp, ROOT / "weights/ae-fashion")
    png = files["png"].read_bytes()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"LATENTSERVE_PORT": str(port), "LATENTSERVE_WORKERS": str(args.workers),
           "LATENTSERVE_LOG_LEVEL": "warning"}  # fmt: skip
    rows = []
    with server([sys.executable, "-m", "service"], env, f"{base}/health/ready"):
        url = f"{base}/v1/models/ae-fashion/reconstruct"
        wrk(url, files["json"], CLIENTS, args.seconds)  # warm-up: traces, buffers, batch shapes
        # alone before and after every expensive row: each row is compared with the mean of
        # the two runs around it (this host's speed drifted by 30% within minutes)
        alones = [wrk(url, files["json"], CLIENTS, args.seconds)]
        print(f"alone: {alones[0]['rps']:,.0f} req/s, p99 {alones[0]['p99_ms']:.1f} ms", flush=True)
        for name, (path, kind, body) in EXPENSIVE.items():
            with looping(base, path, kind, body, png) as statuses:
                beside = wrk(url, files["json"], CLIENTS, args.seconds)
            alones.append(wrk(url, files["json"], CLIENTS, args.seconds))
            baseline = {k: (alones[-2][k] + alones[-1][k]) / 2 for k in ("rps", "p99_ms")}
            rows.append((name, beside, statuses, baseline))
            print(f"beside {name}: {beside['rps']:,.0f} req/s, p99 {beside['p99_ms']:.1f} ms, "
                  f"{len(statuses)} expensive done {sorted(set(statuses))}; alone after: "
                  f"{alones[-1]['rps']:,.0f} req/s", flush=True)  # fmt: skip
        usual = latency_ms(base, png)
        for _ in range(4):
            with contextlib.suppress(httpx.TimeoutException):
                httpx.post(f"{base}/v1/models/gan-fashion/encode?inversion=optimisation", content=png,
                           headers={"content-type": "image/png"}, timeout=0.3)  # fmt: skip
        started = time.perf_counter()
        httpx.post(
            url,
            content=files["json"].read_bytes(),
            headers={"content-type": "application/json"},
            timeout=30,
        ).raise_for_status()
        after = (time.perf_counter() - started) * 1000
        print(
            f"after 4 abandoned inversions: a reconstruct took {after:.1f} ms (usual {usual:.1f} ms)"
        )
    lines = [
        f"`python -m bench.isolation --seconds {args.seconds} --workers {args.workers}`: ae-fashion reconstruct (JSON) "
        f"from {CLIENTS} clients, alone and beside 2 clients looping an expensive request.",
        "",
        "| beside | req/s | alone (mean of the runs before and after) | share of alone | p50 ms | p99 ms | p99 vs alone | expensive requests done |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, r, statuses, alone in rows:
        lines.append(f"| {name} | {r['rps']:,.0f} | {alone['rps']:,.0f} | {r['rps'] / alone['rps']:.0%} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['p99_ms'] / alone['p99_ms']:.1f}x | "
                     f"{len(statuses)} ({', '.join(f'{s}: {statuses.count(s)}' for s in sorted(set(statuses)))}) |")  # fmt: skip
    lines += ["", "Alone, in order: " + ", ".join(f"{a['rps']:,.0f}" for a in alones) + " req/s."]
    lines += [
        "",
        f"After 4 encodes abandoned after 0.3 s: one reconstruct in {after:.1f} ms (usual: {usual:.1f} ms).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "isolation.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
