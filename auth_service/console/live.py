"""Live figures from the replicas' Prometheus endpoints: rates between two scrapes.

Counters and histograms are cumulative since a replica started, so a rate needs two
samples: each scrape is kept (the last few minutes of them) and figures are taken between
the newest and the oldest one at least ``MIN_SPAN_S`` older. Until then, totals.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

MIN_SPAN_S = 5.0
KEEP_S = 300.0
Sample = dict[tuple[str, frozenset], float]


def parse(text: str) -> Sample:
    """Flatten exposition text into {(sample name, labels): value}."""
    out: Sample = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(sample: Sample, name: str, **labels: str) -> float:
    """Sum the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in sample.items() if n == name and want <= lab)


def buckets(sample: Sample, name: str) -> dict[float, float]:
    """Return a histogram's cumulative counts by upper bound, summed over its labels."""
    out: dict[float, float] = {}
    for (n, lab), v in sample.items():
        if n == f"{name}_bucket":
            le = float(dict(lab)["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def quantile(cum: dict[float, float], q: float) -> float | None:
    """Estimate a quantile from cumulative bucket counts, as histogram_quantile does."""
    if not cum or cum.get(math.inf, 0) <= 0:
        return None
    bounds = sorted(cum)
    rank = q * cum[math.inf]
    prev_b, prev_c = 0.0, 0.0
    for b in bounds:
        if cum[b] >= rank:
            if math.isinf(b):
                return prev_b  # beyond the last finite bucket: its bound is all we know
            span = cum[b] - prev_c
            return prev_b + (b - prev_b) * ((rank - prev_c) / span if span else 1.0)
        prev_b, prev_c = b, cum[b]
    return None


@dataclass
class Replica:
    url: str
    history: deque = field(default_factory=deque)  # (time, Sample)
    error: str = ""


class Scraper:
    """Scrape each metrics URL on demand (at most every ``MIN_SPAN_S``) and derive figures."""

    def __init__(self, urls: list[str], timeout_s: float = 2.0) -> None:
        for u in urls:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"--metrics {u!r}: want an http:// or https:// URL")
        self.replicas = [Replica(u) for u in urls]
        self.timeout_s = timeout_s
        self._lock = threading.Lock()

    def scrape(self, now: float | None = None) -> None:
        """Fetch every endpoint whose newest sample is older than ``MIN_SPAN_S``."""
        now = time.time() if now is None else now
        for r in self.replicas:
            with self._lock:
                if r.history and now - r.history[-1][0] < MIN_SPAN_S:
                    continue
            try:
                with urllib.request.urlopen(r.url, timeout=self.timeout_s) as resp:
                    sample = parse(resp.read(4 << 20).decode())
                err = ""
            except Exception as exc:  # unreachable or malformed: shown, not raised
                sample, err = None, f"{type(exc).__name__}: {exc}"
            with self._lock:
                r.error = err
                if sample is not None:
                    r.history.append((now, sample))
                while r.history and now - r.history[0][0] > KEEP_S:
                    r.history.popleft()

    def figures(self) -> list[dict]:
        """Return one dict of figures per replica."""
        with self._lock:
            return [_figures(r) for r in self.replicas]


def _delta(new: Sample, old: Sample | None) -> Sample:
    if old is None:
        return new
    # A restarted replica's counters start again below the old ones: use the new totals.
    if any(v < old.get(k, 0.0) for k, v in new.items() if k[0].endswith(("_total", "_count"))):
        return new
    return {k: v - old.get(k, 0.0) for k, v in new.items()}


def _figures(r: Replica) -> dict:
    out: dict = {"url": r.url, "error": r.error, "up": bool(r.history) and not r.error}
    if not r.history:
        return out
    t1, new = r.history[-1]
    old = next(((t, s) for t, s in reversed(r.history) if t1 - t >= MIN_SPAN_S), None)
    span = t1 - old[0] if old else None
    d = _delta(new, old[1] if old else None)
    acc = total(d, "kfaar_decisions_total", decision="accept")
    rej = total(d, "kfaar_decisions_total", decision="reject")
    per_min = (lambda x: x * 60.0 / span) if span else (lambda x: None)
    lat = buckets(d, "kfaar_request_seconds")
    lag = buckets(d, "kfaar_index_sync_lag_seconds")
    out.update(
        span_s=span,
        decisions=acc + rej,
        decisions_per_min=per_min(acc + rej),
        accept_rate=acc / (acc + rej) if acc + rej else None,
        requests_per_min=per_min(total(d, "kfaar_requests_total")),
        errors=total(d, "kfaar_requests_total") - total(d, "kfaar_requests_total", code="OK"),
        refusals=total(d, "kfaar_refusals_total"),
        guess_refusals=total(d, "kfaar_guess_refusals_total"),
        p50=quantile(lat, 0.5),
        p95=quantile(lat, 0.95),
        p99=quantile(lat, 0.99),
        sync_lag_p99=quantile(lag, 0.99),
        index_templates=total(new, "kfaar_index_templates"),
        building=total(new, "kfaar_index_shortlists_building"),
    )
    return out
