"""GET /metrics after known traffic, read with prometheus_client's own parser."""

from prometheus_client.parser import text_string_to_metric_families

from tests.harness.client import (
    http_request, octet, send_syslog, start_node, stop_node, syslog_message, wait_for,
)


def scrape(node) -> dict:
    answer = http_request(node.api_port, "GET", "/metrics")
    assert answer.status == 200
    assert answer.headers.get("content-type", "").startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def test_counters_add_up_after_known_traffic(node):
    before = scrape(node)
    channel, tokens = node.channel("app")
    good = b"".join(octet(syslog_message(tokens["app"], "web.1", f"line {n}")) for n in range(7))
    unknown = octet(syslog_message("t.00000000-0000-4000-8000-000000000000", "web.1", "who"))
    malformed = octet(b"this is not syslog")
    send_syslog(node.syslog_port, good + unknown + malformed)
    def written(samples):
        return sum(v for (name, _), v in samples.items() if name == "logplex_backlog_written_total")

    # Backlog writes are flushed a moment after routing, and the unknown token is dropped once
    # the node's config has caught up (a round trip): wait for both.
    after = wait_for(lambda: scrape(node), lambda s: written(s) - written(before) >= 7 and value(
        s, "logplex_messages_unknown_token_total") > value(before, "logplex_messages_unknown_token_total"))

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("logplex_messages_received_total") == 9
    assert delta("logplex_messages_routed_total") == 7
    assert delta("logplex_messages_unknown_token_total") == 1
    assert delta("logplex_messages_malformed_total") == 1
    assert delta("logplex_bytes_received_total") == len(good + unknown + malformed)
    assert delta("logplex_connections_total") == 1
    assert written(after) - written(before) == 7
    assert value(after, "logplex_redis_command_seconds_count", redis="shard-0", op="backlog_flush") >= 1
    assert value(after, "logplex_config_cache_age_seconds") >= 0
    assert "logplex_active_tails" in {name for name, _ in after}


def test_the_metrics_credential_is_optional_by_flag(tmp_path_factory, redis):
    guarded = start_node(tmp_path_factory, redis, "--metrics-auth")
    try:
        assert http_request(guarded.api_port, "GET", "/metrics").status == 401
        assert guarded.api("GET", "/metrics").status == 200
    finally:
        stop_node(guarded)
