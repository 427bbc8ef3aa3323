"""``python -m bench.engines`` on a tiny model: the table it writes, and its arithmetic count.
No timing is asserted (bench/ prints figures; tests never check speed)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bench.engines import flops_per_image, main

from .factories import write_tiny


class Affine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).relu()


def test_flops_per_image_counts_the_multiply_adds_twice() -> None:
    assert flops_per_image(Affine(), "forward", torch.rand(3, 10)) == 2 * 10 * 4
    conv = nn.Conv2d(2, 5, 3, padding=1)  # 8x8 outputs, 5 channels, 2 x 3 x 3 taps each
    assert flops_per_image(conv, "forward", torch.rand(2, 2, 8, 8)) == 2 * 8 * 8 * 5 * 2 * 9


def test_the_engines_table_has_every_call_each_engine_and_the_auto_choice(tmp_path: Path) -> None:
    write_tiny(tmp_path / "weights" / "ae-t", "ae", seed=1)
    out = tmp_path / "engines.md"
    assert (
        main(["--weights", str(tmp_path / "weights"), "--seconds", "0.05", "--out", str(out)]) == 0
    )
    text = out.read_text()
    assert "GFLOP/s** (one thread)" in text
    rows = {line.split(" | ")[1]: line.split(" | ") for line in text.splitlines()
            if line.startswith("| ae-t |")}  # fmt: skip
    assert set(rows) == {"decode (decode)", "encode (encode)", "reconstruct (reconstruct)"}
    for cells in rows.values():
        costs, auto, mflop = cells[2:8], cells[8], cells[9]
        assert all(float(c.replace(",", "")) > 0 for c in costs), cells
        assert auto in ("ORT", "trace"), cells
        assert float(mflop) > 0
    # reconstruct is encode then decode: its arithmetic is theirs together (to the 0.01 shown)
    total = float(rows["encode (encode)"][9]) + float(rows["decode (decode)"][9])
    assert abs(float(rows["reconstruct (reconstruct)"][9]) - total) <= 0.02
