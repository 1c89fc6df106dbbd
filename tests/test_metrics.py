"""The Prometheus exposition of a node's counters."""

from logplex.metrics import Metrics


def test_declared_metrics_are_listed_at_zero_and_counts_add_up():
    m = Metrics()
    m.inc("logplex_messages_received_total", 3)
    m.inc("logplex_messages_received_total", 2)
    m.inc("logplex_http_requests_total", status="204")
    m.gauge_callback("logplex_active_tails", lambda: [({}, 4)])
    text = m.exposition().decode()
    assert "# TYPE logplex_messages_received_total counter" in text
    assert "\nlogplex_messages_received_total 5\n" in text
    assert 'logplex_http_requests_total{status="204"} 1' in text
    assert "\nlogplex_messages_malformed_total 0\n" in text
    assert "\nlogplex_active_tails 4\n" in text


def test_label_values_are_escaped():
    m = Metrics()
    m.inc("logplex_x_total", kind='a"b\\c\nd')
    assert 'logplex_x_total{kind="a\\"b\\\\c\\nd"} 1' in m.exposition().decode()
