"""The baseline a user writes by hand: FastAPI, a sync route, one forward pass per request.

BENCH_MODEL=weights/ae-fashion uvicorn bench.peers.plain_fastapi:app --workers N
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI
from pydantic import BaseModel

from models import load_model

from .codec import decode, encode

torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
model = load_model(os.environ.get("BENCH_MODEL", "weights/ae-fashion"))
app = FastAPI()


class Request(BaseModel):
    image: str


@app.post("/reconstruct")
def reconstruct(request: Request) -> dict[str, str]:
    x = decode(request.image).unsqueeze(0)  # [1, 1, H, W]
    with torch.inference_mode():
        y = model.reconstruct(x)[0]
    return {"image": encode(y)}


@app.get("/hello")
def hello() -> dict[str, bool]:
    return {"ok": True}


@app.post("/echo")
def echo(request: Request) -> dict[str, str]:
    """The floor: the same body parsed and sent back, no model (make bench's echo floor)."""
    return {"image": request.image}
