"""A fixed-rate loop on the monotonic clock that never drifts, and the statistics of its timing.

Deadline k is `t0 + k * period`, computed from the start time and never from the previous wake-up, so
errors do not accumulate. `RateLoop.wait()` sleeps until `spin_s` before the deadline (the OS wakes a
sleeping thread late by 50-100 us and more under load) and busy-waits the rest. A tick whose wake-up is
later than `miss_tolerance_s` after its deadline is a *deadline miss*: counted, reported, and the schedule
skips ahead to the next deadline still in the future instead of racing through the missed ones.

With a simulated clock (`now`/`sleep` of `sim.embedded.physics.SimClock` when the physics is stepped on
demand) the same loop runs faster than real time; set `spin_s=0` then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_RATE_HZ, MAX_RATE_HZ = 1.0, 1000.0


@dataclass
class TimingSummary:
    """Period error (wake-up minus deadline, s) over the recorded ticks, and the miss count."""

    ticks: int
    misses: int
    skipped: int  # deadlines passed over after a miss
    rate_hz: float  # achieved tick rate over the recorded window
    p50_s: float
    p99_s: float
    max_s: float

    def to_json(self) -> dict[str, float | int]:
        """Milliseconds for humans and JSON."""
        return {"ticks": self.ticks, "deadline_misses": self.misses, "skipped_deadlines": self.skipped,
                "rate_hz": round(self.rate_hz, 3), "period_error_p50_ms": self.p50_s * 1e3,
                "period_error_p99_ms": self.p99_s * 1e3, "period_error_max_ms": self.max_s * 1e3}


class TimingStats:
    """A ring of the latest period errors (and wake-up times) for percentiles; counts are all-time."""

    def __init__(self, capacity: int = 65536) -> None:
        self._err = np.zeros(capacity)
        self._wake = np.zeros(capacity)
        self._n = 0
        self.misses = 0
        self.skipped = 0

    def add(self, wake: float, error: float) -> None:
        i = self._n % self._err.shape[0]
        self._err[i], self._wake[i] = error, wake
        self._n += 1

    @property
    def ticks(self) -> int:
        return self._n

    def summary(self) -> TimingSummary:
        n = min(self._n, self._err.shape[0])
        if n == 0:
            return TimingSummary(0, self.misses, self.skipped, 0.0, 0.0, 0.0, 0.0)
        err = np.abs(self._err[:n])
        wake = self._wake[:n]
        span = float(wake.max() - wake.min())
        rate = (n - 1) / span if n > 1 and span > 0 else 0.0
        p50, p99 = np.percentile(err, [50, 99])
        return TimingSummary(self._n, self.misses, self.skipped, rate, float(p50), float(p99), float(err.max()))

    def reset(self) -> None:
        self._n = 0
        self.misses = 0
        self.skipped = 0


class RateLoop:
    """Wake at `rate_hz` on absolute deadlines.

        loop = RateLoop(100.0)
        while running:
            t = loop.wait()       # the deadline this tick belongs to
            ...                   # the tick's work; finish before the next deadline

    Args:
        rate_hz: ticks per second (1-1000).
        spin_s: busy-wait this long before each deadline (0 disables spinning).
        miss_tolerance_s: a wake-up later than this after its deadline counts as a miss; default a quarter
            period, at most 2 ms.
        now, sleep: the clock (time.monotonic / time.sleep by default; a SimClock's when simulated).
    """

    def __init__(self, rate_hz: float, spin_s: float = 0.0008, miss_tolerance_s: float | None = None,
                 now: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 stats_capacity: int = 65536) -> None:
        if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
            raise ValueError(f"rate_hz must be in [{MIN_RATE_HZ:g}, {MAX_RATE_HZ:g}], got {rate_hz}")
        if spin_s < 0:
            raise ValueError(f"spin_s must be >= 0, got {spin_s}")
        self.rate_hz = float(rate_hz)
        self.period = 1.0 / self.rate_hz
        self.spin_s = min(float(spin_s), self.period)
        self.miss_tolerance_s = (min(0.25 * self.period, 0.002) if miss_tolerance_s is None
                                 else float(miss_tolerance_s))
        self._now, self._sleep = now, sleep
        self.stats = TimingStats(stats_capacity)
        self._t0: float | None = None
        self._k = 0

    def start(self) -> float:
        """(Re)start the schedule now; the first `wait()` returns one period later."""
        self._t0 = self._now()
        self._k = 0
        self.stats.reset()
        return self._t0

    @property
    def next_deadline(self) -> float:
        if self._t0 is None:
            self.start()
        assert self._t0 is not None
        return self._t0 + (self._k + 1) * self.period

    def wait(self) -> float:
        """Block until the next deadline; returns it. Late ticks are counted as misses."""
        deadline = self.next_deadline
        remaining = deadline - self._now()
        if remaining > self.spin_s:
            self._sleep(remaining - self.spin_s)
        if self.spin_s > 0:
            while self._now() < deadline:  # spin the last fraction of a millisecond
                pass
        wake = self._now()
        error = wake - deadline
        self._k += 1
        self.stats.add(wake, error)
        if error > self.miss_tolerance_s:
            self.stats.misses += 1
            # Skip the deadlines already passed: the next tick is the first one still in the future.
            behind = int(error // self.period)
            if behind:
                self.stats.skipped += behind
                self._k += behind
        return deadline

    def summary(self) -> TimingSummary:
        """Timing of the ticks so far."""
        return self.stats.summary()
