"""When a drain sends again: what an endpoint made of a batch, the backoff before a retry, the linger of HTTP drains.

The worker holds no rule of its own on time: it asks these. All of them are
sans-IO (a clock is passed in), so they are tested without a reactor.
"""

from __future__ import annotations

import email.utils
import random
from typing import Callable

import attrs


@attrs.frozen
class Outcome:
    """What an endpoint made of a batch."""

    delivered: bool
    retry: bool = False
    retry_after: float | None = None
    error: str | None = None
    certificate_error: bool = False

    @classmethod
    def ok(cls) -> Outcome:
        return cls(True)

    @classmethod
    def retry_later(cls, error: str, retry_after: float | None = None, certificate_error=False) -> Outcome:
        return cls(False, True, retry_after, error, certificate_error)

    @classmethod
    def rejected(cls, error: str) -> Outcome:
        return cls(False, False, None, error)


class Backoff:
    """Exponential backoff with jitter, capped; a Retry-After from the endpoint wins."""

    def __init__(self, initial: float = 1.0, cap: float = 30.0, factor: float = 2.0,
                 rand: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.rand = rand
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        self.failures += 1
        if retry_after is not None:
            # Honoured, within reason: a receiver asking for an hour would
            # just fill the spool.
            return min(max(retry_after, 0.0), max(self.cap, 300.0))
        ceiling = min(self.cap, self.initial * self.factor ** min(self.failures - 1, 32))
        # "Equal jitter": at least half the step, so retries still back off,
        # and spread so that many drains do not retry in lockstep.
        return ceiling / 2 + self.rand() * ceiling / 2

    def reset(self) -> None:
        self.failures = 0


def parse_retry_after(value: bytes | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


class Pace:
    """The linger of a node's HTTP drains together: their own (base) while they send
    fewer than `budget` lingered POSTs (batches under the target size) a second
    between them, longer (up to cap) while they send more. A POST costs the node
    tens of microseconds whatever its size (README: about 60 us in bench/http_post.py),
    so thousands of drains of a few lines a second each would otherwise spend a
    large share of a core on POSTs alone; with a longer linger the same lines
    go in fewer, larger POSTs. Full batches are not counted: a longer linger cannot
    make them fewer.

    Measured over windows of `window` seconds, with no timer of its own: the rate is
    looked at when a drain asks for the linger or sends. The linger moves by the square
    root of (rate / budget) per window, so it settles instead of swinging.
    """

    def __init__(self, base: float, budget: int, clock: Callable[[], float], cap: float = 5.0,
                 window: float = 1.0) -> None:
        self.base = base
        self.budget = budget
        self.clock = clock
        self.cap = max(cap, base)
        self.window = window
        self._linger = base
        self._count = 0
        self._since = clock()

    @property
    def linger(self) -> float:
        self._update()
        return self._linger

    def posted(self) -> None:
        self._count += 1
        self._update()

    def _update(self) -> None:
        now = self.clock()
        elapsed = now - self._since
        if elapsed < self.window:
            return
        rate = self._count / elapsed
        if rate <= 0:
            self._linger = self.base
        else:
            self._linger = min(self.cap, max(self.base, self._linger * (rate / self.budget) ** 0.5))
        self._count, self._since = 0, now
