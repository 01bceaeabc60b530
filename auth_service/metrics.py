"""Prometheus metrics: requests by method and status, latency, decisions, refusals.

Each server gets its own registry, served over HTTP on ``--metrics-port``. No label ever
carries a subject id, a device id or an embedding: only method names, status codes and
decision kinds, so the metrics endpoint leaks nothing about who was seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kfaar_requests", "RPCs by method and status code", ["method", "code"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "kfaar_request_seconds", "RPC latency by method", ["method"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )  # fmt: skip
        self.decisions = Counter(
            "kfaar_decisions", "Verify decisions", ["decision"], registry=self.registry
        )
        self.refusals = Counter(
            "kfaar_refusals", "refused requests by reason", ["reason"], registry=self.registry
        )
        # Online guessing (auth_service/ratelimit.py): misses charged, and calls refused
        # because a budget was empty, by budget kind (device, token, subject, pair).
        self.guess_failures = Counter(
            "kfaar_guess_failures", "Verify and Identify calls that matched nobody",
            ["method"], registry=self.registry,
        )  # fmt: skip
        self.guess_refusals = Counter(
            "kfaar_guess_refusals", "calls refused because a guess budget was spent",
            ["budget"], registry=self.registry,
        )  # fmt: skip

        # Seconds from a template write's commit on any replica to this replica's index.
        self.sync_lag = Histogram(
            "kfaar_index_sync_lag_seconds", "delay until another replica's write is searchable",
            registry=self.registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )  # fmt: skip

        # The loaded 1:N indexes, read at each scrape (watch_indexes): a replica whose
        # shortlist is still building answers Identify exactly, right but slower.
        self.index_templates = Gauge(
            "kfaar_index_templates", "templates in this replica's loaded 1:N indexes",
            registry=self.registry,
        )  # fmt: skip
        self.index_building = Gauge(
            "kfaar_index_shortlists_building", "1:N indexes searching exactly while their "
            "shortlist builds", registry=self.registry,
        )  # fmt: skip

    def watch_indexes(self, indexes: Callable[[], list]) -> None:
        """Report the indexes that ``indexes()`` returns at every scrape."""

        def total(of: Callable) -> Callable[[], float]:
            def read() -> float:
                try:
                    return float(sum(of(i) for i in indexes()))
                except Exception:  # e.g. Milvus unreachable: a gap, not a failed scrape
                    return float("nan")

            return read

        self.index_templates.set_function(total(len))
        self.index_building.set_function(total(lambda i: bool(getattr(i, "building", False))))

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics over HTTP."""
        start_http_server(port, addr=host, registry=self.registry)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Count and time every unary RPC, including those the auth layer refuses."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        def timed(request, context: grpc.ServicerContext):
            t0, code = time.perf_counter(), None
            try:
                return inner(request, context)
            finally:
                code = context.code() or grpc.StatusCode.OK
                self.m.requests.labels(method, code.name).inc()
                self.m.latency.labels(method).observe(time.perf_counter() - t0)

        return grpc.unary_unary_rpc_method_handler(
            timed, handler.request_deserializer, handler.response_serializer
        )
