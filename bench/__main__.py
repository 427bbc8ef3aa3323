"""``python -m bench``: latentserve against a plain FastAPI app and LitServe, same machine,
same model (the shipped ae-fashion), same request bodies, same load generator (wrk).

Writes bench/results/latest.{md,json} and bench/results/throughput.png, and prints the table.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import torch
from PIL import Image

from models import load_model
from training.extras import require

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LUA = ROOT / "bench" / "wrk_post.lua"
CONCURRENCY = (1, 8, 64, 256)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """pid and every process below it, read from /proc."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def rss_mb(pid: int) -> float:
    """Memory of a process and all its descendants, in MB: the sum of their proportional set
    sizes (PSS), so that library pages shared by the workers count once, not once per worker
    (a plain RSS sum over-counts torch's shared libraries by ~150 MB per extra process)."""
    total = 0
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


@contextlib.contextmanager
def server(
    cmd: list[str], env: dict[str, str], ready_url: str, cwd: Path = ROOT
) -> Iterator[dict[str, Any]]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    info: dict[str, Any] = {}
    tree: set[int] = {proc.pid}
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{cmd} did not become ready")
            time.sleep(0.05)
        info["cold_start_s"] = time.perf_counter() - started
        time.sleep(1.0)
        info["rss_mb"] = rss_mb(proc.pid)
        info["rss"] = lambda: rss_mb(proc.pid)  # for callers that measure again later
        yield info
    finally:
        # Every process of the server, including workers that a main process leaves behind
        # when it exits on SIGTERM (LitServe's do: they must not skew the next measurement).
        tree.update(descendants(proc.pid))
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (
            proc.poll() is None or any(map(alive, tree - {proc.pid}))
        ):
            time.sleep(0.1)  # fmt: skip
        left = [p for p in tree if p != proc.pid and alive(p)]
        if proc.poll() is None:
            left.append(proc.pid)
        for p in left:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        proc.wait(10)
        if not left:
            info["sigterm"] = "exited"
        elif proc.pid in left:
            info["sigterm"] = "ignored SIGTERM; killed after 15 s"
        else:
            info["sigterm"] = (
                f"main process exited but {len(left)} worker process(es) ignored SIGTERM; killed after 15 s"
            )


def wrk(url: str, body: Path, connections: int, seconds: int, content_type: str = "application/json",
        accept: str = "application/json", method: str = "POST") -> dict[str, Any]:  # fmt: skip
    threads = 1 if connections < 8 else 2
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_CONTENT_TYPE": content_type, "BENCH_ACCEPT": accept,
           "BENCH_METHOD": method}  # fmt: skip
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", str(LUA), url], env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH "))
    r = json.loads(line[6:])
    errors = r["non2xx"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    return {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000, "p95_ms": r["p95_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
        "errors": errors, "requests": r["requests"],
    }  # fmt: skip


def bodies(tmp: Path, model_dir: Path) -> dict[str, Path]:
    from training.data import FASHION_MNIST_DIR, load_fashion_mnist_split

    img = load_fashion_mnist_split(FASHION_MNIST_DIR, "t10k").images[0, 0].numpy()
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="PNG")
    png = buffer.getvalue()
    files = {
        "json": json.dumps({"image": "data:image/png;base64," + base64.b64encode(png).decode()}),
        "png": png,
        "generate": json.dumps({"n": 64, "seed": 1}),
        "empty": "",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp / name
        paths[name].write_bytes(content if isinstance(content, bytes) else content.encode())
    return paths


def configs(port: int, workers: int) -> dict[str, tuple[list[str], dict[str, str], str, str]]:
    """name -> (command, env, ready URL, reconstruct URL)."""
    base = f"http://127.0.0.1:{port}"
    py = sys.executable
    return {
        "latentserve": (
            [py, "-m", "service"],
            {
                "LATENTSERVE_PORT": str(port),
                "LATENTSERVE_WORKERS": str(workers),
                "LATENTSERVE_LOG_LEVEL": "warning",
                # wrk's connections share one address but stand for many clients
                "LATENTSERVE_MAX_EXPENSIVE_PER_CLIENT": "1024",
            },
            f"{base}/health/ready",
            f"{base}/v1/models/ae-fashion/reconstruct",
        ),
        "fastapi": (
            [
                py,
                "-m",
                "uvicorn",
                "bench.peers.plain_fastapi:app",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
            ],
            {},
            f"{base}/hello",
            f"{base}/reconstruct",
        ),
        "litserve": (
            [py, "-m", "bench.peers.litserve_server", str(port), str(workers)],
            {},
            f"{base}/health",
            f"{base}/reconstruct",
        ),
    }


def raw_forward_rate(
    model_dir: Path, batch: int = 64, seconds: float = 3.0, threads: int = 2
) -> float:
    """Images/s of the bare decode in this process, after a warm-up (the first calls set up
    oneDNN kernels: without it the rate read 2.6x too low). Both cores by default: the
    strictest reference for a service that uses them too."""
    torch.set_num_threads(threads)
    model = load_model(model_dir)
    z = torch.randn(batch, model.latent_dim)
    with torch.inference_mode():
        for _ in range(5):
            model.decode(z)
    done, started = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - started < seconds:
            model.decode(z)
            done += batch
    return done / (time.perf_counter() - started)


def sampling_rates(
    names: tuple[str, ...] = ("pixelcnn-fashion", "made-fashion", "rbm-fashion"),
    sizes: tuple[int, ...] = (16, 64),
    threads: int = 2,
) -> dict[str, dict[int, float]]:
    """Images/s of ``generate`` for the sequential samplers (pixel by pixel, or Gibbs
    steps), in this process, through the declared operation exactly as the service runs it."""
    torch.set_num_threads(threads)
    rates: dict[str, dict[int, float]] = {}
    for name in names:
        folder = ROOT / "weights" / name
        if not folder.is_dir():
            continue
        model = load_model(folder)
        rates[name] = {}
        with torch.inference_mode():
            model.sample(2, torch.Generator().manual_seed(0))  # warm-up
            for n in sizes:
                started = time.perf_counter()
                model.sample(n, torch.Generator().manual_seed(1))
                rates[name][n] = n / (time.perf_counter() - started)
                print(f"{name:18} generate n={n:<3} {rates[name][n]:8.2f} images/s", flush=True)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per point")
    parser.add_argument(
        "--warmup", type=int, default=2, help="unrecorded wrk run before each point"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--servers", nargs="+", default=["latentserve", "fastapi", "litserve"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--generate-model", default="gan-fashion")
    parser.add_argument(
        "--sampling-only", action="store_true",
        help="only the sequential samplers' generate rates (pixelcnn, made, rbm); no servers",
    )  # fmt: skip
    args = parser.parse_args()
    if args.sampling_only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        rates = sampling_rates()
        (RESULTS / "sampling.json").write_text(json.dumps(rates, indent=1) + "\n")
        return 0
    # the plot needs matplotlib (train extra), the LitServe peer the bench extra: say so now,
    # not after a quarter of an hour of measuring
    require("python -m bench", "train", *(["bench"] if "litserve" in args.servers else []))
    if shutil.which("wrk") is None:
        print("bench: wrk is missing: apt-get install wrk", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    files = bodies(tmp, ROOT / "weights/ae-fashion")
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores",
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "runs": {},
    }

    # First, on an idle machine: the in-process reference the generate route is compared with.
    results["raw_forward_images_per_s"] = raw_forward_rate(ROOT / "weights" / args.generate_model)
    results["sampling_images_per_s"] = sampling_rates()  # pixelcnn, made, rbm: n=16 and 64
    for name in args.servers:
        for workers in args.workers:
            port = free_port()
            cmd, env, ready, url = configs(port, workers)[name]
            key = f"{name}-{workers}w"
            with server(cmd, env, ready) as info:
                points = {}
                for c in args.concurrency:
                    # warm-up at this concurrency, not recorded: the first batches of each new
                    # size set up oneDNN kernels and allocate (they put 20 ms into a p99)
                    wrk(url, files["json"], c, args.warmup)
                    points[c] = wrk(url, files["json"], c, args.seconds)
                    print(f"{key:16} c={c:<4} {points[c]['rps']:8.0f} req/s  p50 {points[c]['p50_ms']:6.1f} ms  "
                          f"p99 {points[c]['p99_ms']:7.1f} ms  errors {points[c]['errors']}", flush=True)  # fmt: skip
                if name == "latentserve":
                    info["raw_png_64"] = wrk(
                        url, files["png"], 64, args.seconds, "image/png", "image/png"
                    )
                    gen_url = url.replace(
                        "ae-fashion/reconstruct", f"{args.generate_model}/generate"
                    )
                    info["generate_64"] = wrk(gen_url, files["generate"], 8, args.seconds)
                if name == "fastapi":
                    info["hello_ceiling"] = wrk(
                        ready, files["empty"], 64, args.seconds, method="GET"
                    )
                    echo_url = url.replace("/reconstruct", "/echo")
                    wrk(echo_url, files["json"], 64, args.warmup)
                    info["echo_floor"] = wrk(echo_url, files["json"], 64, args.seconds)
            info.pop("rss")
            results["runs"][key] = {"workers": workers, "points": points, **info}
            print(
                f"{key:16} cold start {info['cold_start_s']:.2f} s, memory (PSS) {info['rss_mb']:.0f} MB, SIGTERM: {info['sigterm']}"
            )
    if "latentserve" in args.servers:
        results["onnx_user_model"] = onnx_point(tmp, files, args)
    results["engines"] = engine_costs(("ae-fashion", args.generate_model))
    write_reports(results)
    return 0


def onnx_point(tmp: Path, files: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """ae-fashion exported as a user's ONNX model (python -m training export), served alone:
    the same reconstruct point at 64 clients, best of 1 and 2 workers."""
    weights = tmp / "onnx-weights"
    subprocess.run([sys.executable, "-m", "training", "export", "--format", "onnx",
                    "--model", str(ROOT / "weights/ae-fashion"), "--out", str(weights / "ae-onnx")],
                   check=True, cwd=ROOT)  # fmt: skip
    found: dict[str, Any] = {}
    for workers in args.workers:
        port = free_port()
        cmd, env, ready, url = configs(port, workers)["latentserve"]
        env = {**env, "LATENTSERVE_WEIGHTS_DIR": str(weights)}
        with server(cmd, env, ready) as info:
            wrk(url.replace("ae-fashion", "ae-onnx"), files["json"], 64, args.warmup)
            point = wrk(url.replace("ae-fashion", "ae-onnx"), files["json"], 64, args.seconds)
        print(f"ae-onnx {workers}w       c=64   {point['rps']:8.0f} req/s  p99 {point['p99_ms']:7.1f} ms  errors {point['errors']}", flush=True)  # fmt: skip
        if not found or point["rps"] > found["rps"]:
            found = {**point, "workers": workers, "rss_mb": info["rss_mb"]}
    return found


def engine_costs(names: tuple[str, ...]) -> str:
    """The forward cost per image of each engine (bench/engines.py) for ``names``, as a
    markdown table (results/engines.md keeps the table of every model)."""
    from .engines import main as engines_main

    out = Path(tempfile.mkdtemp()) / "engines.md"
    engines_main(["--seconds", "0.5", "--models", *names, "--out", str(out)])
    return out.read_text()


def best(results: dict[str, Any], name: str, c: int) -> tuple[str, dict[str, Any]] | None:
    runs = [(k, r["points"][str(c)] if str(c) in r["points"] else r["points"][c]) for k, r in results["runs"].items()
            if k.startswith(name + "-")]  # fmt: skip
    return max(runs, key=lambda kr: kr[1]["rps"]) if runs else None


def write_reports(results: dict[str, Any]) -> None:
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    lines = ["| server (best of 1/2 workers) | clients | req/s | p50 ms | p95 ms | p99 ms | errors | vs FastAPI | vs LitServe |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    concurrency = sorted({int(c) for r in results["runs"].values() for c in r["points"]})

    def ratio(p: dict[str, Any], other: str, peers: dict[str, Any]) -> str:
        return f"{p['rps'] / peers[other][1]['rps']:.2f}x" if peers.get(other) else "-"

    for c in concurrency:
        peers = {n: best(results, n, c) for n in ("latentserve", "fastapi", "litserve")}
        for entry in peers.values():
            if entry is None:
                continue
            key, p = entry
            lines.append(f"| {key} | {c} | {p['rps']:.0f} | {p['p50_ms']:.1f} | {p['p95_ms']:.1f} | {p['p99_ms']:.1f} | "
                         f"{p['errors']} | {ratio(p, 'fastapi', peers)} | {ratio(p, 'litserve', peers)} |")  # fmt: skip
    extra = []
    for key, run in results["runs"].items():
        extra.append(
            f"- {key}: cold start {run['cold_start_s']:.2f} s, memory (PSS, all processes) {run['rss_mb']:.0f} MB, on SIGTERM: {run['sigterm']}"
        )
        if "raw_png_64" in run:
            r = run["raw_png_64"]
            extra.append(
                f"  - raw PNG in / PNG out, 64 clients: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.1f} ms, errors {r['errors']}"
            )
            g = run["generate_64"]
            rate = g["rps"] * 64
            extra.append(f"  - generate n=64, 8 clients: {rate:.0f} images/s = "
                         f"{rate / results['raw_forward_images_per_s']:.0%} of the raw in-process forward rate "
                         f"({results['raw_forward_images_per_s']:.0f} images/s, batch 64, 2 threads)")  # fmt: skip
        if "hello_ceiling" in run:
            extra.append(
                f"  - load generator ceiling (wrk, 64 clients, hello-world route): {run['hello_ceiling']['rps']:.0f} req/s"
            )
    floors = [r["echo_floor"]["rps"] for r in results["runs"].values() if "echo_floor" in r]
    ours = best(results, "latentserve", 64)
    if floors and ours:
        extra.append(f"- echo floor (FastAPI parsing the same JSON body and echoing it, 64 clients, best of "
                     f"1/2 workers): {max(floors):.0f} req/s; latentserve's reconstruct is "
                     f"{ours[1]['rps'] / max(floors):.0%} of it")  # fmt: skip
    onnx = results.get("onnx_user_model")
    if onnx:
        extra.append(f"- a user's ONNX model (ae-fashion exported by `python -m training export`), reconstruct, "
                     f"64 clients, {onnx['workers']} workers: {onnx['rps']:.0f} req/s, p99 {onnx['p99_ms']:.1f} ms, "
                     f"errors {onnx['errors']}")  # fmt: skip
    if results.get("engines"):
        extra += ["", results["engines"].replace("# Forward cost", "### Forward cost")]
    text = "\n".join([*lines, "", *extra]) + "\n"
    (RESULTS / "latest.md").write_text(text)
    print("\n" + text)
    plot(results, concurrency)


def plot(results: dict[str, Any], concurrency: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for key, run in results["runs"].items():
        pts = [run["points"].get(c, run["points"].get(str(c))) for c in concurrency]
        axes[0].plot(concurrency, [p["rps"] for p in pts], marker="o", label=key)
        axes[1].plot(concurrency, [p["p99_ms"] for p in pts], marker="o", label=key)
    for ax, title in zip(axes, ("throughput (req/s)", "p99 latency (ms)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrency, [str(c) for c in concurrency])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "throughput.png")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
