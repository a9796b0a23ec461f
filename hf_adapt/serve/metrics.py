"""Prometheus metrics of one server process: requests, latency, batch sizes, feedback, and the served revision."""

from __future__ import annotations


class Metrics:
    def __init__(self, model: str, revision: str):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("hf_adapt_requests", "HTTP requests by route and status code", ["route", "code"],
                                registry=self.registry)
        self.latency = Histogram("hf_adapt_request_seconds", "Request latency by route", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.batch_size = Histogram("hf_adapt_batch_size", "Inputs per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64,
                                    128, 256), registry=self.registry)
        self.feedback = Counter("hf_adapt_feedback", "Feedback records written, by kind", ["kind"],
                                registry=self.registry)
        self.model = Gauge("hf_adapt_model_info", "The served model and revision (value 1)", ["model", "revision"],
                           registry=self.registry)
        self.model.labels(model=model, revision=revision).set(1)
        self.swaps = Counter("hf_adapt_version_swaps", "New versions swapped in (roll-outs and roll-backs)",
                             registry=self.registry)
        self.refused = Counter("hf_adapt_versions_refused", "New versions refused (failed gate, failed to load)",
                               registry=self.registry)

    def set_model(self, model: str, revision: str, old_revision: str) -> None:
        self.model.labels(model=model, revision=old_revision).set(0)
        self.model.labels(model=model, revision=revision).set(1)
        self.swaps.inc()

    def observe(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route=route, code=str(code)).inc()
        self.latency.labels(route=route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

