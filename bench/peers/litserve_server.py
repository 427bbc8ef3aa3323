"""The same endpoint on LitServe with its batching on (max_batch_size=64, batch_timeout=5 ms).

python -m bench.peers.litserve_server PORT WORKERS
"""

from __future__ import annotations

import os
import sys

import litserve as ls
import torch

from models import load_model

from .codec import decode, encode


class ReconstructAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
        self.model = load_model(os.environ.get("BENCH_MODEL", "weights/ae-fashion"))

    def decode_request(self, request: dict) -> torch.Tensor:
        return decode(request["image"])

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.reconstruct(x)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, output: torch.Tensor) -> dict[str, str]:
        return {"image": encode(output)}


if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    api = ReconstructAPI(max_batch_size=64, batch_timeout=0.005, api_path="/reconstruct")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=workers)
    server.run(port=port, generate_client_file=False)
