"""Prometheus metrics, one registry per app so tests can build several apps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "latentserve_requests",
            "HTTP requests",
            ["route", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "latentserve_request_seconds", "request latency", ["route"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "latentserve_batch_size", "images per forward pass", ["model", "operation"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "latentserve_batch_seconds", "forward pass time", ["model", "operation"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "latentserve_queue_depth", "requests waiting for inference", registry=self.registry
        )
        self.expensive_paused = Gauge(
            "latentserve_expensive_paused_seconds",
            "total time the expensive lane gave way to the cheap one at slice boundaries",
            registry=self.registry,
        )
        self.dropped = Counter(
            "latentserve_dropped_requests",
            "requests dropped before or while running: cancelled (the client left), deadline",
            ["reason"],
            registry=self.registry,
        )
        self.load_seconds = Gauge(
            "latentserve_model_load_seconds",
            "time to load each model",
            ["model"],
            registry=self.registry,
        )
        self.models_failed = Gauge(
            "latentserve_models_failed", "models that failed to load", registry=self.registry
        )
        self.call_engine = Gauge(
            "latentserve_call_engine",
            "1 for the engine each compiled model call runs on (onnxruntime, torchscript, "
            "eager), by model and call (the model's method); calls not compiled yet are absent",
            ["model", "call", "engine"], registry=self.registry,
        )  # fmt: skip
        self.call_timing = Gauge(
            "latentserve_call_timing_microseconds",
            "per image on a call's 16-row compile example, for each engine "
            "LATENTSERVE_ENGINE=auto timed before choosing (service/engines.py)",
            ["model", "call", "engine"], registry=self.registry,
        )  # fmt: skip
        # labels() validates and locks on every call; the label sets are few (route templates,
        # served model names or "(unknown)", status codes), so each child is looked up once
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        children = self._request_children.get((route, model, status))
        if children is None:
            children = (self.requests.labels(route, model, str(status)), self.latency.labels(route))
            self._request_children[(route, model, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_engines(self, calls: Iterable[tuple[str, str, str, dict[str, float]]]) -> None:
        """The compiled calls as they stand: (model, call, engine, timings) each."""
        self.call_engine.clear()  # a reloaded model's old calls go
        self.call_timing.clear()
        for model, call, engine, timings in calls:
            self.call_engine.labels(model, call, engine).set(1)
            for timed, us in timings.items():
                self.call_timing.labels(model, call, timed).set(us)

    def observe_drop(self, reason: str) -> None:
        self.dropped.labels(reason).inc()

    def observe_batch(self, call: Any, rows: int, seconds: float) -> None:
        """``call`` is the engine's batched call; a ModelCall labels itself (model, operation)."""
        name, operation = getattr(call, "label", ("(unknown)", "(unknown)"))
        self.batch_size.labels(name, operation).observe(rows)
        self.batch_seconds.labels(name, operation).observe(seconds)
