"""Bounded soak on loopback: mixed operations from many clients, then errors and memory growth.

    python -m bench.soak --seconds 60 --clients 64            # the full run (README figures)
    python -m bench.soak --requests 600 --clients 16 --weights W  # the CI variant (tests/test_soak.py)

Memory is the server's resident set after a warm-up run, then after the soak; the growth
must stay under --max-growth (5%). It stops by itself: wrk runs for a fixed time, or, with
--requests, until each of its two threads has had its share of replies (--seconds is then
only the bound, and a soak that did not finish within it is reported as a failure).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from .__main__ import ROOT, free_port, server

LUA = ROOT / "bench" / "soak_mixed.lua"


def request_bodies(m: dict) -> dict[str, tuple[str, bytes]]:
    """One request body (content type, bytes) for each operation the model ``m`` (an entry
    of ``GET /v1/models``) supports: a random image, a small latent, a seeded draw."""
    c, side, _ = m["image_shape"]
    arr = (
        np.random.default_rng(0).random((side, side) if c == 1 else (side, side, 3)) * 255
    ).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    png = buffer.getvalue()
    image_json = json.dumps({"image": base64.b64encode(png).decode()})
    bodies = {
        "reconstruct": ("application/json", image_json),
        "encode": ("application/json", image_json),
        "classify": ("application/json", image_json),
        "likelihood": ("application/json", image_json),
        "anomaly": ("application/json", image_json),
        "denoise": ("image/png", png),
        "decode": ("application/json", json.dumps({"latent": [0.1] * m["latent_dim"]})),
        "generate": ("application/json", json.dumps({"n": 8, "seed": 3})),
        "arithmetic": ("application/json", json.dumps({f"latent_{t}": [0.1 * i] * m["latent_dim"] for i, t in enumerate("abc")})),
        "interpolate": ("application/json", json.dumps({"seed_a": 1, "seed_b": 2, "steps": 8} if m["latent_prior"] else {"latent_a": [0.0] * m["latent_dim"], "latent_b": [1.0] * m["latent_dim"], "steps": 8})),
    }  # fmt: skip
    out = {}
    for op in m["operations"]:
        ctype, body = bodies[op]
        out[op] = (ctype, body if isinstance(body, bytes) else body.encode())
    return out


def prepare(folder: Path, base: str) -> None:
    """One request body per operation each model supports, and the plan wrk cycles through."""
    plan = []
    for m in httpx.get(f"{base}/v1/models").json()["models"]:
        for op, (ctype, body) in request_bodies(m).items():
            file = f"{m['name']}-{op}.body"
            (folder / file).write_bytes(body)
            plan.append(f"/v1/models/{m['name']}/{op} {ctype} {file}")
    (folder / "plan.txt").write_text("\n".join(plan) + "\n")


THREADS = 2


def wrk(base: str, folder: Path, clients: int, seconds: int, requests: int | None = None) -> dict:
    env = {**os.environ, "SOAK_DIR": str(folder)}
    if requests is not None:
        env["SOAK_REQUESTS"] = str(-(-requests // THREADS))  # each thread's share, rounded up
        for done in folder.glob("done-*"):
            done.unlink()
    cmd = ["wrk", f"-t{THREADS}", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s", "-s", str(LUA), base]  # fmt: skip
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as proc:
        while requests is not None and proc.poll() is None:
            if len(list(folder.glob("done-*"))) == THREADS:
                proc.send_signal(signal.SIGINT)  # wrk then reports, as after its -d
                break
            time.sleep(0.1)
        out, _ = proc.communicate()
    if proc.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"wrk exited with {proc.returncode}")
    line = next(ln for ln in out.splitlines() if ln.startswith("SOAK "))
    return json.loads(line[5:])


def soak(
    seconds: int, clients: int, weights: Path | None, warmup: int, requests: int | None = None
) -> dict:
    """A soak of ``seconds`` (or of ``requests`` replies, bounded by ``seconds``), after a
    warm-up of ``warmup`` seconds (or, with ``requests``, of half as many replies)."""
    port = free_port()
    env = {
        "LATENTSERVE_PORT": str(port),
        "LATENTSERVE_LOG_LEVEL": "warning",
        # one load generator on one address stands for many clients here
        "LATENTSERVE_MAX_EXPENSIVE_PER_CLIENT": str(clients),
        "PYTHONPATH": str(ROOT),
    }
    if weights:
        env["LATENTSERVE_WEIGHTS_DIR"] = str(weights)
    base = f"http://127.0.0.1:{port}"
    folder = Path(tempfile.mkdtemp())
    with server([sys.executable, "-m", "service"], env, f"{base}/health/ready") as info:
        prepare(folder, base)
        warm = wrk(base, folder, clients, warmup, requests and max(requests // 2, clients))
        before = info["rss"]()
        result = wrk(base, folder, clients, seconds, requests)
        after = info["rss"]()
    result.update(
        warmup_requests=warm["requests"], warmup_errors=warm["errors"], rss_before_mb=before, rss_after_mb=after,
        rss_growth=(after - before) / before, rps=result["requests"] / (result["duration_us"] / 1e6),
        operations=len((folder / "plan.txt").read_text().splitlines()), clients=clients, seconds=seconds,
        finished=requests is None or result["requests"] >= requests,
    )  # fmt: skip
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument(
        "--warmup",
        type=int,
        default=40,
        help="seconds before memory is first read (every batch shape seen)",
    )
    parser.add_argument(
        "--weights", type=Path, help="weights folder (default: the shipped weights)"
    )
    parser.add_argument(
        "--requests", type=int, help="stop after this many replies (--seconds bounds the wait)"
    )
    parser.add_argument("--max-growth", type=float, default=0.05)
    args = parser.parse_args()
    r = soak(args.seconds, args.clients, args.weights, args.warmup, args.requests)
    print(json.dumps(r, indent=1))
    print(f"soak: {r['requests']} requests over {r['operations']} model/operation pairs in {r['duration_us'] / 1e6:.0f} s at "
          f"{r['clients']} clients: {r['rps']:.0f} req/s, p99 {r['p99_us'] / 1000:.1f} ms, {r['errors']} errors; "
          f"resident memory {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB ({r['rss_growth']:+.1%})")  # fmt: skip
    if not r["finished"]:
        print(f"soak: only {r['requests']} of {args.requests} requests within {args.seconds} s")
    ok = (
        r["finished"]
        and r["errors"] == 0
        and r["warmup_errors"] == 0
        and r["rss_growth"] <= args.max_growth
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
