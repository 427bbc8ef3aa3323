"""Before and after in one run: the service at another commit against this tree, alternately.

    python -m bench.compare --before f900077            # reconstruct (JSON), 64 clients, 2 workers
    python -m bench.compare --before HEAD~3 --rounds 3 --clients 8 64
    python -m bench.compare --before HEAD~3 --call generate --clients 8  # gan-fashion, 32 images

This host's throughput drifts by several percent between runs, so one run of each is not a
comparison: the two servers take turns, ``--rounds`` times, on the same model, body and load
(wrk, as ``make bench``), and the table gives every round and the median of each. The other
commit is checked out with ``git worktree`` in a temporary folder and runs on this
environment's packages.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .__main__ import ROOT, bodies, free_port, server, wrk


def checkout(ref: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), ref],
                   check=True, capture_output=True)  # fmt: skip
    return folder


#: what ``--call`` posts: (model, operation, JSON body; None: one Fashion-MNIST image). A
#: generate of 32 images: the most that is not expensive work (LATENTSERVE_EXPENSIVE_ROWS,
#: whose lane admits two requests per client address)
CALLS = {
    "reconstruct": ("ae-fashion", "reconstruct", None),
    "generate": ("gan-fashion", "generate", '{"n": 32, "seed": 1}'),
}


def measure(
    cwd: Path, body: Path, clients: int, seconds: int, workers: int, call: str = "reconstruct"
) -> dict:
    port = free_port()
    env = {"LATENTSERVE_PORT": str(port), "LATENTSERVE_WORKERS": str(workers),
           "LATENTSERVE_LOG_LEVEL": "warning", "LATENTSERVE_WEIGHTS_DIR": str(ROOT / "weights"),
           "PYTHONPATH": str(cwd)}  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with server([sys.executable, "-m", "service"], env, f"{base}/health/ready", cwd=cwd):
        model, operation, _ = CALLS[call]
        url = f"{base}/v1/models/{model}/{operation}"
        wrk(url, body, clients, 2)  # warm-up: traces, buffers
        return wrk(url, body, clients, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--before", required=True, help="the commit to compare with (git ref)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[64])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--call", choices=CALLS, default="reconstruct", help="what is posted")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    body = bodies(tmp, ROOT / "weights/ae-fashion")["json"]
    if (content := CALLS[args.call][2]) is not None:
        body.write_text(content)
    before = checkout(args.before, tmp / "before")
    try:
        print(
            f"| clients | round | {args.before} req/s | this tree req/s | p99 ms before / after |"
        )
        print("|---|---|---|---|---|")
        for clients in args.clients:
            runs: dict[str, list[float]] = {"before": [], "after": []}
            for r in range(args.rounds):
                a = measure(before, body, clients, args.seconds, args.workers, args.call)
                b = measure(ROOT, body, clients, args.seconds, args.workers, args.call)
                runs["before"].append(a["rps"])
                runs["after"].append(b["rps"])
                errors = (
                    f" ({a['errors']} / {b['errors']} errors)" if a["errors"] or b["errors"] else ""
                )
                print(f"| {clients} | {r + 1} | {a['rps']:,.0f} | {b['rps']:,.0f} | "
                      f"{a['p99_ms']:.1f} / {b['p99_ms']:.1f}{errors} |", flush=True)  # fmt: skip
            m_a, m_b = statistics.median(runs["before"]), statistics.median(runs["after"])
            print(f"| {clients} | median | {m_a:,.0f} | {m_b:,.0f} | {m_b / m_a - 1:+.1%} |")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                       check=False, capture_output=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
