"""What operators and load balancers ask a node: its health, its metrics, the cluster's live nodes."""

from __future__ import annotations

from logplex.api.schemas import answer, json_content, operation, ref, text
from logplex.health import assess
from logplex.http.routing import HttpError, Reply, endpoint

HEALTH_ANSWERS = {
    "200": answer("Routing logs: status normal, or degraded when a Redis is down.",
                  json_content(ref("Health"))),
    "503": answer("Not routing logs: status booting, stopping or ingress off; a load balancer should "
                  "send elsewhere.", json_content(ref("Health"))),
}


class Ops:
    """/healthcheck, /metrics and /v3/nodes (the document itself is logplex.api.openapi's)."""

    def __init__(self, api) -> None:
        # The ManagementApi: its health, store, metrics, nodes and settings.
        self.api = api

    def routes(self) -> list:
        metrics_text = self.api.guard(self.metrics_text) if self.api.metrics_auth else self.metrics_text
        return [
            endpoint("GET", "/healthcheck", self.healthcheck, operation(
                "healthcheck", "Whether the node routes logs, and the state of each Redis", "operations",
                HEALTH_ANSWERS, guarded=False)),
            endpoint("GET", "/v3/healthcheck", self.healthcheck, operation(
                "healthcheckV3", "The same as /healthcheck", "operations", HEALTH_ANSWERS, guarded=False)),
            endpoint("GET", "/metrics", metrics_text, operation(
                "metrics", "Prometheus metrics", "operations",
                {"200": text("The Prometheus text exposition format, version 0.0.4.")},
                description="Open to anyone unless the node runs with --metrics-auth; then it asks for a "
                            "full_api credential like the rest of the API (401, 403, 429, 503).",
                security=[{}, {"basic": []}])),
            endpoint("GET", "/v3/nodes", self.list_nodes, operation(
                "listNodes", "The live nodes of the cluster", "operations",
                {"200": answer("Nodes heard from within their heartbeat TTL.",
                               json_content({"type": "array", "items": ref("Node")}))})),
        ]

    async def healthcheck(self, request) -> Reply:
        """200 while the node routes logs (status normal, or degraded with a Redis down), else 503."""
        health = await self.api.boot.health(self.api.health)
        return Reply(health.code, health.document())

    def loaded_health(self):
        return assess(stopping=False, ready=self.api.store.loaded, ingress=True, config_redis=True, shards={})

    async def metrics_text(self, request) -> Reply:
        api = self.api
        api.metrics.set("logplex_config_channels", len(api.store.cache.channels))
        if api.store.loaded_at is not None:
            api.metrics.set("logplex_config_cache_age_seconds",
                            round(api.reactor.seconds() - api.store.loaded_at, 3))
        return Reply(200, api.metrics.exposition(),
                     content_type=b"text/plain; version=0.0.4; charset=utf-8")

    async def list_nodes(self, request) -> Reply:
        if self.api.nodes is None:
            return Reply(200, [])
        try:
            return Reply(200, await self.api.nodes())
        except Exception:
            raise HttpError(503, "The config Redis is not answering; try again shortly.") from None
