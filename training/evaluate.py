"""Placeholder until the evaluator lands (issue 3)."""

import argparse


def add_evaluate_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
