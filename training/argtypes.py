"""Argument types for the command lines: each refuses a bad value with a one-line reason."""

from __future__ import annotations

import argparse

from models import NOISE_KINDS


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a{'n integer' if kind is int else ' number'}: {text!r}"
        ) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def image_shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,32,32, got {text!r}")
    c, h, w = (int(p) for p in parts)
    if c not in (1, 3) or h != w or not 8 <= h <= 256:
        raise argparse.ArgumentTypeError(f"need C of 1 or 3 and square sides of 8..256, got {text}")
    return (c, h, w)


def int_list(text: str) -> tuple[int, ...]:
    return tuple(positive_int(p) for p in text.split(","))


def float_list(text: str) -> tuple[float, ...]:
    values = tuple(_number(p, float) for p in text.split(","))
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be numbers of 0 or more, got {text}")
    return values


def noise_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(","))
    bad = [k for k in kinds if k not in NOISE_KINDS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown noise kinds {bad}; choose from {', '.join(NOISE_KINDS)}"
        )
    return kinds
