"""The live-tail page in a real (headless) Chromium against a real node.

The browser signs in with a credential, picks a channel, reads the backlog,
sees lines sent over TCP syslog arrive live, filters, pauses and resumes; a
page that stops reading is told by the node how many lines it lost (L11).
Over HTTPS (an ssl: API), Chromium trusts the node's key through
--ignore-certificate-errors-spki-list: that key only, no blanket ignore.
"""

from __future__ import annotations

import time

import pytest

from tests.harness.browser import browser, eventually, screenshot  # noqa: F401 (browser: a fixture)
from tests.harness.client import (
    basic,
    http_request,
    octet,
    send_syslog,
    start_node,
    stop_node,
    syslog_message,
)

TAIL_BUFFER = 50


@pytest.fixture(scope="module")
def tail_node(tmp_path_factory, redis):
    node = start_node(tmp_path_factory, redis, "--tail-buffer", str(TAIL_BUFFER))
    yield node
    stop_node(node)


def send(node, token: str, *lines: tuple[int, str, str]) -> None:
    """(pri, procid, text) lines over TCP syslog, octet-counted, on one connection."""
    send_syslog(node.syslog_port, b"".join(
        octet(syslog_message(token, procid, text, pri=pri)) for pri, procid, text in lines))


def reader_credential(node, channel: str) -> tuple[str, str]:
    made = node.api("POST", "/v3/credentials", {"perms": ["read_channel"], "channels": [channel]})
    assert made.status == 201, made
    return made.json()["id"], made.json()["secret"]


# -- the page, seen from the test -----------------------------------------------------------------
ROWS = """
return Array.from(document.querySelectorAll('#lines > li')).map(li => ({
  msg: (li.querySelector('.msg') || li).textContent,
  ts: li.querySelector('.ts') ? li.querySelector('.ts').textContent : '',
  sev: li.querySelector('.sev') ? li.querySelector('.sev').textContent : '',
  src: li.querySelector('.src') ? li.querySelector('.src').textContent : '',
  cls: li.className,
  hidden: li.hidden,
  color: li.querySelector('.msg') ? getComputedStyle(li.querySelector('.msg')).color : '',
}));
"""


class Page:
    def __init__(self, driver, node) -> None:
        self.d = driver
        self.node = node

    def open(self) -> None:
        self.d.get(self.node.api_url + "/tail")
        eventually(lambda: self.js("return document.activeElement.id"), lambda v: v == "cred-id")

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def by_id(self, element_id: str):
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.ID, element_id)

    def text(self, element_id: str) -> str:
        return self.js("return document.getElementById(arguments[0]).textContent", element_id)

    def visible(self, element_id: str) -> bool:
        return self.by_id(element_id).is_displayed()

    def keys(self, *keys: str) -> None:
        """Typed into whatever has the focus, as a keyboard user would."""
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.d).send_keys(*keys).perform()

    def sign_in(self, user: str, secret: str) -> None:
        from selenium.webdriver.common.keys import Keys

        # Keyboard only: the id field has the focus, Tab to the secret, Enter submits.
        self.keys(user, Keys.TAB, secret, Keys.ENTER)

    def watch(self, channel: str | None = None, *, source: str = "", ps: str = "", num: int | None = None) -> None:
        eventually(lambda: self.visible("watch-box"))
        if not self.visible("watch"):
            # The form is folded while a channel is watched: open it as a user would.
            self.by_id("watch-summary").click()
        for element_id, value in (("channel", channel), ("source", source), ("ps", ps),
                                  ("num", None if num is None else str(num))):
            if value is not None:
                field = self.by_id(element_id)
                field.clear()
                field.send_keys(value)
        self.by_id("watch-button").click()

    def rows(self) -> list[dict]:
        return self.js(ROWS)

    def messages(self, shown_only: bool = False) -> list[str]:
        return [r["msg"] for r in self.rows() if not (shown_only and r["hidden"])]

    def wait_messages(self, done, timeout: float = 5.0) -> list[str]:
        return eventually(self.messages, done, timeout)

    def state(self) -> str:
        return self.js("return document.getElementById('state').dataset.state || ''")


# -- tests ----------------------------------------------------------------------------------------------
def test_sign_in_backlog_live_lines_filter_and_pause(tail_node, browser):
    from selenium.webdriver.common.keys import Keys

    node = tail_node
    channel, tokens = node.channel("app", "router")
    app, router = tokens["app"], tokens["router"]
    send(node, app, (131, "web.1", "backlog: payment failed for order 1042"),
         (134, "web.1", "backlog: GET /orders 200 in 12ms"),
         (132, "worker.1", "backlog: slow query took 812ms"))
    assert len(node.wait_backlog(channel, 3)) == 3
    user, secret = reader_credential(node, channel)

    page = Page(browser, node)
    page.open()
    page.sign_in(user, secret)
    # A read_channel credential naming one channel: it is picked already.
    eventually(lambda: page.visible("watch"))
    assert page.by_id("channel").get_attribute("value") == channel
    assert user in page.text("who")
    page.watch()
    assert page.js("return document.activeElement.id") == "log"

    backlog = page.wait_messages(lambda m: len(m) >= 3)
    assert backlog == ["backlog: payment failed for order 1042", "backlog: GET /orders 200 in 12ms",
                       "backlog: slow query took 812ms"]
    assert eventually(page.state, lambda s: s == "live") == "live"

    # A line sent over TCP shows up within 2 s.
    started = time.monotonic()
    send(node, router, (134, "web.2", "live: GET /health 200 in 1ms"))
    seen = page.wait_messages(lambda m: "live: GET /health 200 in 1ms" in m, timeout=2.0)
    assert "live: GET /health 200 in 1ms" in seen, seen
    assert time.monotonic() - started < 2.0
    send(node, app, (135, "web.1", "live: cache warmed (debug)"),
         (130, "worker.1", "live: disk almost full: needle in the haystack"),
         (133, "web.2", "live: deploy v42 finished"),
         (134, "web.1", 'live: <b>not bold</b> & "quoted"'))
    rows = eventually(page.rows, lambda r: len(r) >= 8)
    assert [r["msg"] for r in rows][4:] == [
        "live: cache warmed (debug)", "live: disk almost full: needle in the haystack",
        "live: deploy v42 finished", 'live: <b>not bold</b> & "quoted"']
    # Severity from PRI, as a label and a colour; messages are text, never markup.
    by_msg = {r["msg"]: r for r in rows}
    assert [r["sev"] for r in rows] == ["err", "info", "warn", "info", "debug", "crit", "notice", "info"]
    assert "sev-3" in by_msg["backlog: payment failed for order 1042"]["cls"]
    assert by_msg["backlog: payment failed for order 1042"]["color"] != by_msg["live: deploy v42 finished"]["color"]
    assert by_msg["live: GET /health 200 in 1ms"]["src"] == "router[web.2]:"
    assert page.js("return document.querySelectorAll('#lines b').length") == 0
    assert page.text("counts") == "8 lines"
    shot = screenshot(browser, "tailpage.png")

    # The free-text filter applies as one types; Escape clears it.
    page.keys("/")
    assert page.js("return document.activeElement.id") == "filter"
    page.keys("NEEDLE")
    assert page.messages(shown_only=True) == ["live: disk almost full: needle in the haystack"]
    assert page.text("counts") == "8 lines · 1 match"
    page.by_id("filter").send_keys(Keys.BACKSPACE * 6 + "warm")
    assert page.messages(shown_only=True) == ["live: cache warmed (debug)"]
    page.keys(Keys.ESCAPE)
    assert len(page.messages(shown_only=True)) == 8

    # Pause: lines wait (and are counted) until resume.
    page.by_id("pause").click()
    assert page.by_id("pause").get_attribute("aria-pressed") == "true"
    assert page.state() == "paused"
    send(node, app, (134, "web.1", "while paused 1"), (134, "web.1", "while paused 2"))
    label = eventually(lambda: page.text("pause"), lambda t: t == "Resume (2 new)")
    assert label == "Resume (2 new)"
    assert "while paused 1" not in page.messages()
    assert page.text("counts") == "8 lines · 2 waiting"
    page.by_id("pause").click()
    assert page.messages()[-2:] == ["while paused 1", "while paused 2"]
    assert page.state() == "live" and page.text("pause") == "Pause"
    # And from the keyboard: p pauses and resumes when not typing.
    page.by_id("log").click()
    page.keys("p")
    assert page.by_id("pause").get_attribute("aria-pressed") == "true"
    page.keys("p")
    assert page.by_id("pause").get_attribute("aria-pressed") == "false"

    # Times in the browser's zone on request.
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Kolkata"})
    assert page.rows()[0]["ts"] == "2024-05-06T07:08:09.123456+00:00"
    page.by_id("local-time").click()
    assert page.rows()[0]["ts"] == "2024-05-06 12:38:09.123456 +05:30"
    page.by_id("local-time").click()
    assert page.rows()[0]["ts"] == "2024-05-06T07:08:09.123456+00:00"

    # No secret in the address bar or in what the node logged; no token on the page.
    assert secret not in browser.current_url
    assert secret not in node.proc.log_text()
    assert app not in browser.page_source and router not in browser.page_source
    print(f"screenshot: {shot}")


def test_auto_scroll_stops_when_scrolled_up_and_a_phone_width_fits(tail_node, browser):
    node = tail_node
    channel, tokens = node.channel("app")
    send(node, tokens["app"], *[(134, f"web.{i % 3 + 1}", f"line {i:03d} of the backlog") for i in range(120)])
    assert len(node.wait_backlog(channel, 120, num=200)) == 120
    page = Page(browser, node)
    page.open()
    page.sign_in("admin", "secret")
    # full_api: every channel is offered, this one among them.
    eventually(lambda: page.visible("watch"))
    options = page.js("return Array.from(document.querySelectorAll('#channel-list option')).map(o => o.value)")
    assert channel in options
    page.watch(channel, num=200)
    assert len(page.wait_messages(lambda m: len(m) >= 120)) == 120
    at_bottom = "var l = document.getElementById('log'); return l.scrollHeight - l.scrollTop - l.clientHeight < 4"
    assert eventually(lambda: page.js(at_bottom))
    send(node, tokens["app"], (134, "web.1", "followed"))
    page.wait_messages(lambda m: m[-1] == "followed")
    assert eventually(lambda: page.js(at_bottom))

    # The reader scrolls up: new lines no longer pull the view down.
    page.js("document.getElementById('log').scrollTop = 0")
    assert eventually(lambda: page.visible("jump"))
    send(node, tokens["app"], (134, "web.1", "not followed"))
    page.wait_messages(lambda m: m[-1] == "not followed")
    assert page.js("return document.getElementById('log').scrollTop") == 0
    page.by_id("jump").click()
    assert eventually(lambda: page.js(at_bottom)) and not page.visible("jump")

    # Server-side filters, as in sessions: ps (web matches web.1) and source.
    page.watch(channel, ps="web.2", num=200)
    filtered = page.wait_messages(lambda m: len(m) >= 40)
    assert len(filtered) == 40 and all(r["src"] == "app[web.2]:" for r in page.rows())

    browser.set_window_size(390, 844)
    try:
        assert page.js("return document.documentElement.scrollWidth <= window.innerWidth")
        assert page.visible("filter") and page.visible("pause") and page.visible("log")
        screenshot(browser, "tailpage-phone.png")
    finally:
        browser.set_window_size(1280, 860)


def test_wrong_secret_and_foreign_channel_are_told_in_the_page(tail_node, browser):
    node = tail_node
    mine, _ = node.channel("app")
    theirs, _ = node.channel("app")
    user, secret = reader_credential(node, mine)
    # The stream answers 401 without a challenge: the browser shows no dialog of its own.
    answer = http_request(node.api_port, "GET", f"/v3/channels/{mine}/stream")
    assert answer.status == 401 and answer.header("WWW-Authenticate") is None
    answer = http_request(node.api_port, "GET", f"/v3/channels/{theirs}/stream",
                          headers={"Authorization": basic(user, secret)})
    assert answer.status == 403

    page = Page(browser, node)
    page.open()
    page.sign_in(user, "not-the-secret")
    error = eventually(lambda: page.text("sign-in-error"), lambda t: t)
    assert error == "Wrong credential id or secret."
    assert page.js("return document.activeElement.id") == "cred-secret"
    page.by_id("cred-secret").clear()
    page.by_id("cred-secret").send_keys(secret + "\n")
    page.watch(theirs)
    error = eventually(lambda: page.text("watch-error"), lambda t: t)
    assert error == f"This credential cannot read channel {theirs}."
    assert page.state() == "error"
    page.by_id("sign-out").click()
    assert page.visible("sign-in") and not page.visible("viewer")
    assert page.by_id("cred-secret").get_attribute("value") == ""


def test_a_page_that_stops_reading_is_told_what_the_node_dropped(tail_node, browser):
    node = tail_node
    channel, tokens = node.channel("app")
    page = Page(browser, node)
    page.open()
    page.sign_in("admin", "secret")
    page.watch(channel, num=0)
    assert eventually(page.state, lambda s: s == "live") == "live"
    page.by_id("pause").click()
    # Paused, the page holds some lines, then stops reading: the browser's
    # and the kernel's buffers fill, the node's tail is paused, keeps its
    # newest TAIL_BUFFER lines and counts the rest.
    filler = "x" * 900
    dropped_before = node.metric("logplex_tail_dropped_total")
    deadline = time.monotonic() + 30
    batch = 0
    while node.metric("logplex_tail_dropped_total") <= dropped_before:
        assert time.monotonic() < deadline, "the node never dropped a line for the paused page"
        send(node, tokens["app"], *[(134, "web.1", f"flood {batch}.{i} {filler}") for i in range(2000)])
        batch += 1
        time.sleep(0.2)
    # Stop sending, then resume: what was held shows, then the L11 notice.
    page.by_id("pause").click()
    notice = eventually(lambda: page.text("drops") if page.visible("drops") else "", bool, timeout=10)
    assert notice.startswith("The node dropped ") and "(L11)" in notice
    l11 = eventually(lambda: [r for r in page.rows() if "l11" in r["cls"]], bool)
    assert l11 and l11[0]["msg"].startswith("Error L11 (Tail buffer overflow) -> This tail session dropped ")
    dropped = int(notice.split()[3])
    assert dropped > 0
    # The page keeps at most 5000 rows; it counted every line it received.
    assert len(page.rows()) <= 5000
    send(node, tokens["app"], (134, "web.1", "after the flood"))
    assert page.wait_messages(lambda m: m[-1] == "after the flood", timeout=10)[-1] == "after the flood"
    # Every line the node dropped for this page, the page was told of.
    told = int(page.text("drops").split()[3])
    assert told == node.metric("logplex_tail_dropped_total") - dropped_before


def test_the_page_reconnects_when_its_node_comes_back(tail_node, browser):
    node = tail_node
    channel, tokens = node.channel("app")
    send(node, tokens["app"], (134, "web.1", "before the restart"))
    assert len(node.wait_backlog(channel, 1)) == 1
    page = Page(browser, node)
    page.open()
    page.sign_in("admin", "secret")
    page.watch(channel)
    page.wait_messages(lambda m: m == ["before the restart"])
    assert eventually(page.state, lambda s: s == "live") == "live"
    code = node.proc.stop()
    assert code in (0, -15), node.proc.log_text()[-2000:]
    assert eventually(page.state, lambda s: s in ("error", "connecting")) in ("error", "connecting")
    node.proc.start()
    assert eventually(page.state, lambda s: s == "live", timeout=10) == "live"
    send(node, tokens["app"], (134, "web.1", "after the restart"))
    shown = page.wait_messages(lambda m: m[-1:] == ["after the restart"])
    # Only new lines after a reconnect: the backlog is on the page already.
    assert shown == ["before the restart",
                     "Reconnected. Lines sent while the page was disconnected are not shown.",
                     "after the restart"]


# -- over HTTPS ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def https_site(tmp_path_factory, redis):
    """A node whose API (and so the page) is an ssl: listener with an RSA test certificate."""
    from tests.harness.client import Node
    from tests.harness.tls import HttpsNodeProcess, RsaPki

    pki = RsaPki(str(tmp_path_factory.mktemp("rsa-tail")))
    proc = HttpsNodeProcess(str(tmp_path_factory.mktemp("https-node")), redis.url, pki,
                            ["--login-failures", "1000000"])
    proc.start()
    yield Node(proc, [proc.syslog_port]), pki
    stop_node(Node(proc, []))


@pytest.fixture(scope="module")
def https_browser(https_site):
    """Chromium trusting the node's key, and only it (not every certificate error)."""
    from tests.harness.browser import start_chromium

    _, pki = https_site
    driver = start_chromium(extra_flags=(f"--ignore-certificate-errors-spki-list={pki.spki_sha256}",))
    driver.set_page_load_timeout(15)
    yield driver
    driver.quit()


def test_the_page_works_over_https_with_alpn(https_site, https_browser):
    from tests.harness.tls import https_request

    node, pki = https_site
    page = Page(https_browser, node)
    page.open()
    assert https_browser.current_url.startswith("https://")
    # Chromium offers h2 and http/1.1 over ALPN; the node answers http/1.1.
    protocol = page.js("return (performance.getEntriesByType('navigation')[0] || {}).nextHopProtocol")
    assert protocol == "http/1.1", https_browser.page_source[:500]
    channel = f"https-{time.monotonic_ns()}"
    made = https_request(node.api_port, pki, "PUT", f"/v3/channels/{channel}", {"tokens": ["app"]})
    assert made.status == 201, made
    token = made.json()["tokens"]["app"]
    send(node, token, (134, "web.1", "backlog over https"))
    page.sign_in("admin", "secret")
    eventually(lambda: page.visible("watch"))
    page.watch(channel)
    assert page.wait_messages(lambda m: m == ["backlog over https"]) == ["backlog over https"]
    assert eventually(page.state, lambda s: s == "live") == "live"
    send(node, token, (134, "web.1", "live over https"))
    assert page.wait_messages(lambda m: m[-1:] == ["live over https"])[-1:] == ["live over https"]
