"""A small Prometheus HTTP API client: range queries, bounded, behind a circuit breaker.

Every bound is here so no caller (the investigation, the LLM's tool) can ask for more: the step is
chosen so a series has at most `max_points` points, at most `max_series` series are kept, and a
response larger than `max_bytes` is refused unread. Failures raise `PrometheusError` saying what
failed and where; the callers record them and go on without the evidence.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import httpx

from bus import BreakerOpen, CircuitBreaker


class PrometheusError(RuntimeError):
    """A query that did not give a result: why, and at which Prometheus."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]  # (unix seconds, value), NaN dropped


@dataclass(frozen=True)
class RangeResult:
    query: str
    start: float
    end: float
    step: float
    series: tuple[Series, ...]
    truncated: bool  # more series matched than `max_series`


@dataclass(frozen=True)
class Bounds:
    timeout_s: float = 5.0
    max_points: int = 120  # per series; the step grows with the window to stay under it
    min_step_s: float = 1.0
    max_series: int = 20
    max_bytes: int = 2_000_000
    max_window_s: float = 6 * 3600.0  # an older start is moved forward to this


class PrometheusClient:
    """Range queries against one Prometheus (`base_url`, e.g. http://prometheus:9090)."""

    def __init__(self, base_url: str, bounds: Bounds | None = None, *, breaker: CircuitBreaker | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.bounds = bounds or Bounds()
        self.breaker = breaker or CircuitBreaker(f"prometheus {self.base_url}", threshold=3, cooldown_s=30.0)
        self._http = httpx.Client(base_url=self.base_url, timeout=self.bounds.timeout_s, transport=transport,
                                  headers={"Accept": "application/json"})

    def step_for(self, start: float, end: float) -> float:
        """The smallest whole-second step that keeps a series under `max_points` points."""
        span = max(0.0, end - start)
        return max(self.bounds.min_step_s, float(math.ceil(span / max(1, self.bounds.max_points - 1))))

    def query_range(self, query: str, start: float, end: float) -> RangeResult:
        """`query` evaluated from `start` to `end` (unix seconds); PrometheusError on any failure."""
        bounds = self.bounds
        if end <= start:
            raise PrometheusError(f"empty window for {query!r}: end {end} is not after start {start}")
        start = max(start, end - bounds.max_window_s)
        step = self.step_for(start, end)
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}",
                  "timeout": f"{bounds.timeout_s:g}s"}
        body = self._post("/api/v1/query_range", params)
        data = body.get("data") or {}
        if data.get("resultType") != "matrix":
            raise PrometheusError(f"{self.base_url}: query_range answered {data.get('resultType')!r}, not a matrix")
        raw = data.get("result") or []
        try:
            series = tuple(_series(item) for item in raw[:bounds.max_series])
        except (TypeError, ValueError, AttributeError) as exc:
            raise PrometheusError(f"{self.base_url}: a series of {query!r} is malformed: {exc}") from None
        return RangeResult(query, start, end, step, series, truncated=len(raw) > bounds.max_series)

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, params: dict[str, str]) -> dict:
        """POST form-encoded (long queries do not fit a URL), through the breaker, size-bounded."""
        try:
            trial = self.breaker.before_call()
        except BreakerOpen as exc:
            raise PrometheusError(f"{self.base_url}: not queried: {exc}") from None
        try:
            with self._http.stream("POST", path, data=params) as response:
                raw = _read_bounded(response, self.bounds.max_bytes, self.base_url)
        except httpx.HTTPError as exc:
            self.breaker.failure()
            raise PrometheusError(f"{self.base_url}{path}: {type(exc).__name__}: {exc or 'no answer'}; is "
                                  "Prometheus running at RTEM_PROMETHEUS_URL?") from None
        except PrometheusError:
            self.breaker.release(trial)
            raise
        if response.status_code >= 500:
            self.breaker.failure()
        else:
            self.breaker.success()  # it answered: a refused query says nothing about its health
        try:
            body = json.loads(raw)
        except ValueError:
            raise PrometheusError(f"{self.base_url}{path}: HTTP {response.status_code}, not JSON") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            kind = body.get("errorType") if isinstance(body, dict) else None
            raise PrometheusError(f"{self.base_url}{path}: HTTP {response.status_code} {kind or 'error'}: "
                                  f"{error or 'no error message'}")
        return body


def _read_bounded(response: httpx.Response, limit: int, where: str) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise PrometheusError(f"{where}: the answer is over {limit} bytes; the query matches too much "
                                  "(aggregate it in the query file)")
        chunks.append(chunk)
    return b"".join(chunks)


def _series(item: dict) -> Series:
    labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
    points = []
    for ts, value in item.get("values") or ():
        number = float(value)
        if not math.isnan(number):
            points.append((float(ts), number))
    return Series(labels, tuple(points))
