"""GAN inversion through the service: amortised (the inverter, refined) against optimisation.

    python -m bench.inversion                 # shipped gan-fashion and cgan-fashion, 1 worker
    python -m bench.inversion --images 100 --search-images 5

For each GAN, sequential single-image requests (one client, raw PNG bodies of Fashion-MNIST
test images): ``encode`` latency (p50, p90) per method, and the PSNR of ``reconstruct``
(format=array) against the image, on the first ``--images`` test images for the amortised
method and the first ``--search-images`` for the optimisation (about a second or more
each). Targets (issue 20): amortised at most 50 ms p50 with at least the optimisation's PSNR
on 100 test images (the model card's ``inversion_psnr``). Writes ``bench/results/inversion.md``.
Not a test: figures, not verdicts.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time

import httpx
import numpy as np
from PIL import Image

from training.metrics import psnr

from .__main__ import RESULTS, ROOT, free_port, server

MODELS = ("gan-fashion", "cgan-fashion")


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def measure(client: httpx.Client, base: str, name: str, method: str, images: np.ndarray) -> dict:
    """p50/p90 of encode and mean PSNR of reconstruct over ``images`` [N, 28, 28] uint8."""
    encode_ms, psnrs = [], []
    for image in images:
        body, headers = png_bytes(image), {"content-type": "image/png"}
        started = time.perf_counter()
        r = client.post(f"{base}/v1/models/{name}/encode?inversion={method}", content=body,
                        headers=headers)  # fmt: skip
        encode_ms.append((time.perf_counter() - started) * 1000)
        r.raise_for_status()
        r = client.post(f"{base}/v1/models/{name}/reconstruct?format=array&inversion={method}",
                        content=body, headers=headers)  # fmt: skip
        r.raise_for_status()
        out = np.asarray(r.json()["image"], dtype=np.float64).reshape(1, -1)
        psnrs.append(float(psnr(out, image.reshape(1, -1) / 255.0)[0]))
    q = statistics.quantiles(encode_ms, n=10) if len(encode_ms) > 1 else encode_ms * 9
    return {"images": len(images), "p50_ms": statistics.median(encode_ms), "p90_ms": q[8],
            "psnr": float(np.mean(psnrs))}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inversion", description=__doc__)
    parser.add_argument("--images", type=int, default=100, help="test images, amortised")
    parser.add_argument("--search-images", type=int, default=5, help="test images, optimisation")
    args = parser.parse_args()
    from training.data import FASHION_MNIST_DIR, load_fashion_mnist_split

    test = load_fashion_mnist_split(FASHION_MNIST_DIR, "t10k").images[:, 0].numpy()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "LATENTSERVE_PORT": str(port),
        "LATENTSERVE_WORKERS": "1",
        "LATENTSERVE_LOG_LEVEL": "warning",
    }
    rows = []
    with (
        server([sys.executable, "-m", "service"], env, f"{base}/health/ready"),
        httpx.Client(timeout=120) as client,
    ):
        for name in MODELS:
            card = json.loads((ROOT / "weights" / name / "card.json").read_text())["metrics"]
            measure(client, base, name, "amortised", test[:3])  # warm-up
            amortised = measure(client, base, name, "amortised", test[: args.images])
            search = measure(client, base, name, "optimisation", test[: args.search_images])
            rows.append((name, card, amortised, search))
            print(f"{name}: amortised p50 {amortised['p50_ms']:.1f} ms, {amortised['psnr']:.2f} dB; "
                  f"optimisation p50 {search['p50_ms']:.0f} ms, {search['psnr']:.2f} dB "
                  f"(card: {card['inversion_psnr']:.2f} dB on {card['inversion_images']})", flush=True)  # fmt: skip
    lines = [
        f"`python -m bench.inversion --images {args.images} --search-images {args.search_images}`: single-image "
        "requests from one client, raw PNG bodies of Fashion-MNIST test images, shipped weights, 1 worker.",
        "",
        "| model | method | images | encode p50 ms | encode p90 ms | reconstruct PSNR dB | optimisation PSNR on 100 (card) |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, card, amortised, search in rows:
        for method, r in (("amortised", amortised), ("optimisation", search)):
            lines.append(f"| {name} | {method} | {r['images']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                         f"{r['psnr']:.2f} | {card['inversion_psnr']:.2f} |")  # fmt: skip
    (RESULTS / "inversion.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
