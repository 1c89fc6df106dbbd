"""Tests for tests/tools.py: the summary line that names tools the run lacked."""

import pytest

from tests.tools import MARK, missing_tools, skip_missing


def test_skip_missing_names_the_tools_and_how_to_install_them():
    with pytest.raises(pytest.skip.Exception) as skipped:
        skip_missing("rsyslogd", "apt-get install rsyslog")
    assert str(skipped.value) == f"{MARK}rsyslogd (install: apt-get install rsyslog)"


def test_missing_tools_counts_tests_per_tool_and_ignores_other_skips():
    reasons = [f"Skipped: {MARK}chromium (install: apt-get install chromium)"] * 3 + [
        f"Skipped: {MARK}rsyslogd (install: apt-get install rsyslog)",
        "Skipped: this Python's OpenSSL cannot offer TLS 1.1 at all: nothing to prove",
    ]
    assert missing_tools(reasons) == {"chromium (install: apt-get install chromium)": 3,
                                      "rsyslogd (install: apt-get install rsyslog)": 1}
