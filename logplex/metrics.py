"""Counters and gauges of one node, and their Prometheus text exposition.

Counting is a dict update on the reactor thread, once per batch: nothing here
locks or starts a thread.
"""

from __future__ import annotations

from typing import Callable, Iterable

# name -> (type, help). Everything a node counts is declared here, so the
# exposition always lists it, zero or not.
DECLARED: dict[str, tuple[str, str]] = {
    "logplex_messages_received_total": ("counter", "Syslog messages framed from any input."),
    "logplex_messages_routed_total": ("counter", "Messages delivered to a channel."),
    "logplex_messages_malformed_total": ("counter", "Messages dropped: not RFC 5424."),
    "logplex_messages_unknown_token_total": ("counter", "Messages dropped: no such token."),
    "logplex_messages_routed_late_total": ("counter",
                                           "Syslog messages whose token this worker learnt of only by waiting for its "
                                           "config to catch up (a token made a moment before elsewhere)."),
    "logplex_messages_forbidden_total": ("counter", "Messages dropped: ingress denied."),
    "logplex_bytes_received_total": ("counter", "Bytes read from syslog and HTTP inputs."),
    "logplex_framing_errors_total": ("counter", "Connections closed for broken framing."),
    "logplex_partial_frames_dropped_total": ("counter", "Incomplete frames discarded when a sender disconnected."),
    "logplex_http_requests_total": ("counter", "HTTP log input requests by status."),
    "logplex_backlog_written_total": ("counter", "Messages written to channel backlogs."),
    "logplex_backlog_dropped_total": ("counter", "Messages not written to a backlog: shed while the shard's Redis failed and the writer's queue was full."),
    "logplex_backlog_superseded_total": ("counter", "Messages not written because newer ones fill the backlog's history."),
    "logplex_backlog_queued_messages": ("gauge", "Messages waiting in a shard's backlog writer, per shard (the writer queue depth)."),
    "logplex_backlog_queued_bytes": ("gauge", "Bytes waiting in a shard's backlog writer, per shard."),
    "logplex_backlog_pushback_total": ("counter", "Times a shard's backlog writer, past half its bound with Redis answering, held its senders back."),
    "logplex_node_info": ("gauge", "This node's name and version, as labels (always 1)."),
    "logplex_shard_map_version": ("gauge", "Version of the shard map this node writes backlogs by."),
    "logplex_tail_lines_total": ("counter", "Lines sent to live tails."),
    "logplex_tail_dropped_total": ("counter", "Lines dropped by slow tails (L11)."),
    "logplex_tails_ended_total": ("counter", "Live tails and streams ended because their channel was deleted."),
    "logplex_backlog_forgotten_total": ("counter", "Messages of a deleted channel not written to its backlog (deleted with it)."),
    "logplex_connections_total": ("counter", "Syslog connections accepted."),
    "logplex_active_connections": ("gauge", "Open syslog connections."),
    "logplex_active_tails": ("gauge", "Live tail sessions on this node."),
    "logplex_config_cache_age_seconds": ("gauge", "Seconds since the config cache last heard from Redis."),
    "logplex_config_channels": ("gauge", "Channels in the config cache."),
    "logplex_tail_l11_total": ("counter", "L11 notices sent to slow tails."),
    "logplex_tail_bus_received_total": ("counter", "Lines received from other nodes for local tails."),
    "logplex_tail_bus_dropped_total": ("counter", "Lines for tails on other nodes that the bus could not carry."),
    "logplex_sessions_created_total": ("counter", "Sessions created through this node."),
    "logplex_drain_l10_total": ("counter", "L10 notices sent to drains."),
    "logplex_drain_spool_bytes": ("gauge", "Bytes all of this node's drain spools hold in Redis."),
    "logplex_drain_spool_depth": ("gauge", "Messages in a drain's spool in Redis, per drain."),
    "logplex_spool_adopted_total": ("counter", "Spooled messages of departed nodes this node took over to deliver."),
    "logplex_drain_buffered": ("gauge", "Messages a drain holds in memory, per drain."),
    "logplex_senders_held_total": ("counter", "Reads and POSTs held back until a drain had room (pushback)."),
    "logplex_senders_held_seconds_total": ("counter", "Seconds senders were held back (pushback)."),
    "logplex_redis_command_seconds": ("summary", "Round trips to Redis (backlog flushes, config reads and writes)."),
    "logplex_sender_losses_total": ("counter", "Losses HTTP senders reported (Logplex-Drop-Count, Logplex-Lost-Count)."),
    "logplex_logins_failed_total": ("counter", "Logins refused with 401 (wrong credential id or secret), per listener."),
    "logplex_logins_throttled_total": ("counter",
                                       "Logins refused with 429 before any password hashing, per listener and "
                                       "reason (address, concurrent, credential)."),
    "logplex_api_cross_origin_refused_total": ("counter", "API writes refused with 403: sent from another origin."),
    "logplex_http_slow_clients_total": ("counter", "HTTP connections cut off for sending a request head or body too slowly, by part."),
    "logplex_http_refused_total": ("counter", "POST /logs requests refused for their body or headers, by reason."),
    "logplex_redis_auth_failures_total": ("counter", "Redis connections refused at AUTH (wrong or missing password); retried with backoff."),
    "logplex_config_reseeds_total": ("counter", "Times this node re-seeded an empty or older config Redis from its cache."),
    "logplex_connections_refused_total": ("counter", "Connections closed at once: the listener had --max-connections open."),
    "logplex_syslog_timeouts_total": ("counter", "Syslog connections closed for idling or for a frame sent too slowly, by reason."),
    "logplex_drain_delivered_total": ("counter", "Messages a drain delivered, per drain."),
    "logplex_drain_retried_total": ("counter", "Deliveries a drain retried, per drain."),
    "logplex_drain_dropped_total": ("counter", "Messages a drain dropped, per drain and reason."),
    # Signals to scale on (logplex/saturation.py). Under --workers every
    # worker shows every worker's figures, labelled worker=<node>-<i>.
    "logplex_reactor_lag_seconds": ("gauge", "How late the event loop ran its latest 0.1 s timer: seconds behind, per worker."),
    "logplex_reactor_lag_max_seconds": ("gauge", "The most the event loop ran behind over the last 15 to 30 s, per worker."),
    "logplex_worker_busy_ratio": ("gauge",
                                  "Share of the last second the worker spent working, not waiting for I/O "
                                  "(0 to 1; 1 means it cannot take more), per worker."),
    "logplex_worker_cpu_ratio": ("gauge", "CPU time over wall time in the last second, per worker (not a load signal: see busy)."),
    "logplex_ingress_holds_total": ("counter", "Syslog reads and POST /logs answers held back (pushback), per listener."),
    "logplex_ingress_held": ("gauge", "Syslog connections and POST /logs requests held back now, per listener."),
    "logplex_ingress_held_seconds_total": ("counter",
                                           "Seconds senders were held back (reading paused, answer delayed), "
                                           "holds under way included, per listener."),
}


class Metrics:
    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._gauges: dict[str, Callable[[], Iterable[tuple[dict, float]]]] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.values[key] = self.values.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self.values[(name, tuple(sorted(labels.items())))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        """One observation of a summary (count and sum)."""
        key = tuple(sorted(labels.items()))
        self.values[(name + "_count", key)] = self.values.get((name + "_count", key), 0) + 1
        self.values[(name + "_sum", key)] = self.values.get((name + "_sum", key), 0) + value

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, tuple(sorted(labels.items()))), 0)

    def gauge_callback(self, name: str, read: Callable[[], Iterable[tuple[dict, float]]]) -> None:
        """A gauge computed when scraped: read() yields (labels, value) pairs."""
        self._gauges[name] = read

    def exposition(self) -> bytes:
        # family -> [(sample name, labels, value)]
        families: dict[str, list[tuple[str, tuple[tuple[str, str], ...], float]]] = {}
        for (name, labels), value in self.values.items():
            family = _family(name)
            families.setdefault(family, []).append((name, labels, value))
        for name, read in self._gauges.items():
            families[name] = [(name, tuple(sorted(l.items())), v) for l, v in read()]
        lines = []
        for family in sorted(set(DECLARED) | set(families)):
            kind, text = DECLARED.get(family, ("untyped", family))
            lines.append(f"# HELP {family} {text}")
            lines.append(f"# TYPE {family} {kind}")
            rows = families.get(family)
            if not rows:
                rows = ([(family + "_count", (), 0), (family + "_sum", (), 0)] if kind == "summary"
                        else [(family, (), 0)])
            for name, labels, value in sorted(rows):
                if labels:
                    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{inner}}} {_number(value)}")
                else:
                    lines.append(f"{name} {_number(value)}")
        return ("\n".join(lines) + "\n").encode()


def _family(name: str) -> str:
    for suffix in ("_count", "_sum"):
        if name.endswith(suffix) and DECLARED.get(name[: -len(suffix)], ("",))[0] == "summary":
            return name[: -len(suffix)]
    return name


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
