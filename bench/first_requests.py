"""The first request of every operation after ``/health/ready``, and the memory it leaves.

    python -m bench.first_requests                 # both settings of TRACE_AT_START, 2 rounds
    python -m bench.first_requests --rounds 3 --workers 2

For each setting of ``LATENTSERVE_TRACE_AT_START`` and each round, a fresh server (the shipped
weights, ``--workers`` workers) is started; once it is ready, one client sends every
operation of every model three times in a row: the first answer is what a user meets after a
deploy, the later two are the warm latency of the same request (an operation that is slow by
nature, such as PixelCNN's generation, is slow in both). Then the memory of the whole
process tree (PSS, as ``make bench`` counts it). The table gives, per setting, the p50 over
operations of the first answer, of the warm answer and of the first's excess over the warm
one (what waited for an export or a trace), the worst excess, the time to ready and the
memory; ``--out`` writes it as markdown (default bench/results/first_requests.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

from .__main__ import ROOT, free_port, server
from .soak import request_bodies


def first_requests(base: str) -> list[dict]:
    """Every operation of every model, three times each: [{model, op, first_ms, warm_ms}]."""
    rows = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for m in client.get("/v1/models").json()["models"]:
            for op, (ctype, body) in request_bodies(m).items():
                times = []
                for _ in range(3):
                    started = time.perf_counter()
                    reply = client.post(
                        f"/v1/models/{m['name']}/{op}", content=body,
                        headers={"content-type": ctype},
                    )  # fmt: skip
                    times.append(1000 * (time.perf_counter() - started))
                    if reply.status_code != 200:
                        raise RuntimeError(
                            f"{m['name']} {op}: {reply.status_code} {reply.text[:200]}"
                        )
                rows.append({"model": m["name"], "op": op, "first_ms": times[0],
                             "warm_ms": statistics.median(times[1:])})  # fmt: skip
    return rows


def one_server(trace_at_start: bool, workers: int) -> dict:
    port = free_port()
    env = {
        "LATENTSERVE_PORT": str(port),
        "LATENTSERVE_WORKERS": str(workers),
        "LATENTSERVE_TRACE_AT_START": "true" if trace_at_start else "false",
        "LATENTSERVE_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }
    base = f"http://127.0.0.1:{port}"
    with server([sys.executable, "-m", "service"], env, f"{base}/health/ready") as info:
        rows = first_requests(base)
        time.sleep(2.0)  # the expensive lane hands its freed heap back after 1 s idle
        memory = info["rss"]()
    return {"rows": rows, "ready_s": info["cold_start_s"], "memory_mb": memory}


def summary(runs: list[dict]) -> dict:
    """Per (model, op), the median over rounds; then p50 over operations."""
    keys = [(r["model"], r["op"]) for r in runs[0]["rows"]]

    def median_over_rounds(field: str) -> dict[tuple[str, str], float]:
        values: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
        for run in runs:
            for r in run["rows"]:
                values[r["model"], r["op"]].append(r[field])
        return {k: statistics.median(v) for k, v in values.items()}

    first, warm = median_over_rounds("first_ms"), median_over_rounds("warm_ms")
    excess = {k: first[k] - warm[k] for k in keys}
    worst = max(keys, key=lambda k: excess[k])
    slow = sorted((k for k in keys if excess[k] > 100), key=lambda k: -excess[k])
    return {
        "waited": ", ".join(f"{m} {op} (+{excess[m, op]:.0f} ms)" for m, op in slow) or "none",
        "operations": len(keys),
        "first_p50_ms": statistics.median(first.values()),
        "warm_p50_ms": statistics.median(warm.values()),
        "excess_p50_ms": statistics.median(excess.values()),
        "worst_excess_ms": excess[worst],
        "worst": f"{worst[0]} {worst[1]}",
        "ready_s": statistics.median(run["ready_s"] for run in runs),
        "memory_mb": statistics.median(run["memory_mb"] for run in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_requests", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="fresh servers per setting")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "first_requests.md"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.workers < 1:
        parser.error("--rounds and --workers must be at least 1")
    lines = [
        "# The first request of every operation after ready",
        "",
        f"`python -m bench.first_requests --rounds {args.rounds} --workers {args.workers}`: a fresh "
        "server per round, the shipped weights; one client sends each operation of each model "
        "three times (first, then warm); medians over rounds, then p50 over operations. Memory: "
        "PSS of every process of the server after all of them.",
        "",
        "| TRACE_AT_START | operations | first p50 ms | warm p50 ms | excess p50 ms | worst excess ms | ready s | memory MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    waited: list[str] = []
    for trace in (False, True):
        runs = [one_server(trace, args.workers) for _ in range(args.rounds)]
        s = summary(runs)
        row = (f"| {str(trace).lower()} | {s['operations']} | {s['first_p50_ms']:.1f} | "
               f"{s['warm_p50_ms']:.1f} | {s['excess_p50_ms']:.1f} | {s['worst_excess_ms']:.0f} "
               f"({s['worst']}) | {s['ready_s']:.1f} | {s['memory_mb']:.0f} |")  # fmt: skip
        print(row, flush=True)
        lines.append(row)
        waited.append(f"- TRACE_AT_START={str(trace).lower()}: first answers over 100 ms slower "
                      f"than warm: {s['waited']}")  # fmt: skip
    lines += ["", *waited]
    print("\n".join(waited))
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
