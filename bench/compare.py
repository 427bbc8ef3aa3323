"""Before and after in one run: the service at another commit against this tree, alternately.

    python -m bench.compare --before f900077            # reconstruct (JSON), 64 clients, 2 workers
    python -m bench.compare --before HEAD~3 --rounds 3 --clients 8 64

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


def measure(cwd: Path, body: Path, clients: int, seconds: int, workers: int) -> dict:
    port = free_port()
    env = {"LATENTSERVE_PORT": str(port), "LATENTSERVE_WORKERS": str(workers),
           "LATENTSERVE_LOG_LEVEL": "warning", "LATENTSERVE_WEIGHTS_DIR": str(ROOT / "weights"),
           "PYTHONPATH": str(cwd)}  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with server([sys.executable, "-m", "service"], env, f"{base}/health/ready", cwd=cwd):
        url = f"{base}/v1/models/ae-fashion/reconstruct"
        wrk(url, body, clients, 2)  # warm-up: traces, buffers
        return wrk(url, body, clients, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--before", required=True, help="the commit to compare with (git ref)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[64])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    body = bodies(tmp, ROOT / "weights/ae-fashion")["json"]
    before = checkout(args.before, tmp / "before")
    try:
        print(
            f"| clients | round | {args.before} req/s | this tree req/s | p99 ms before / after |"
        )
        print("|---|---|---|---|---|")
        for clients in args.clients:
            runs: dict[str, list[float]] = {"before": [], "after": []}
            for r in range(args.rounds):
                a = measure(before, body, clients, args.seconds, args.workers)
                b = measure(ROOT, body, clients, args.seconds, args.workers)
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
