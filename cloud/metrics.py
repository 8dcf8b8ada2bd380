"""Prometheus metrics of the relay service (one registry per server, no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("relay_requests", "Relay calls by final status", ["code"], registry=r)
        self.prefill_tokens = Counter("relay_prefill_tokens", "Context tokens prefilled", registry=r)
        self.cached_tokens = Counter("relay_cached_tokens", "Context tokens reused from KV", registry=r)
        self.generated_tokens = Counter("relay_generated_tokens", "Tokens generated", registry=r)
        self.latency = Histogram(
            "relay_latency_seconds",
            "Server time per relay",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.sessions = Gauge("relay_sessions", "Open sessions", registry=r)
        self.kv_bytes = Gauge("relay_kv_cache_bytes", "KV-cache bytes held by sessions", registry=r)
        self.evictions = Gauge("relay_session_evictions", "Sessions evicted (LRU) so far", registry=r)
