"""Capped exponential backoff with full jitter (pure; no sleeping here).

Schedule for attempt ``n`` (0-based): ``min(cap, initial * 2**n)`` seconds,
multiplied by a jitter factor drawn uniformly from ``[1 - jitter, 1]``
(AWS Architecture Blog, "Exponential Backoff And Jitter", 2015).
"""

from __future__ import annotations

import random


class Backoff:
    """Stateful schedule: :meth:`next_delay` returns seconds to wait, :meth:`reset` after success.

    ``initial`` and ``cap`` are seconds (``0 < initial <= cap``); ``jitter`` in [0, 1].
    Raises ``ValueError`` for out-of-range parameters.
    """

    def __init__(self, initial: float = 1.0, cap: float = 30.0, jitter: float = 0.2, rng: random.Random | None = None):
        if not (0 < initial <= cap) or not (0.0 <= jitter <= 1.0):
            raise ValueError("need 0 < initial <= cap and 0 <= jitter <= 1")
        self.initial, self.cap, self.jitter = initial, cap, jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def peek(self) -> float:
        """The un-jittered delay of the next attempt, in seconds."""
        return min(self.cap, self.initial * (2 ** min(self.attempt, 62)))

    def next_delay(self) -> float:
        """Advance one attempt and return its jittered delay in seconds."""
        base = self.peek()
        self.attempt += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Start over from ``initial`` (call after a run that counted as healthy)."""
        self.attempt = 0
