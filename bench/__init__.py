"""Benchmarks: ``make bench`` (``python -m bench``). They print figures; nothing here is a test."""
