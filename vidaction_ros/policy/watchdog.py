"""Perception watchdog: a silent pipeline is the most dangerous failure, so staleness is an Action too.

The policy node feeds every good decision in (`fresh`) and asks `check` on a short timer. Once armed (by
the first good decision, or by `start` at activation with a start-up allowance: a camera that never comes
up, or an embedder that never delivers, must not leave the controller with silence), the watchdog reports
STALE as soon as the newest decision's frame is older than `deadline_s`, repeats it
every check while stale (a controller that missed one still hears the next), and reports RECOVERED with
the next good decision.

Age is measured on the frame's capture stamp when stamps are on the same clock as `now` (live cameras:
wall clock or the robot's sim clock), so a camera that stalls, a transport that drops, an embedder that
dies or merely falls behind all count; when they are not (a file replayed at media time) age is measured
from when the decision was made. Pure: no ROS, the caller passes the clock.
"""
from __future__ import annotations

from dataclasses import dataclass

# Stamps within this distance of `now` are taken to be on the same clock. Media time of a replayed file
# starts near 0, decades away from the wall clock; a live stamp is at most a few seconds old.
SAME_CLOCK_S = 3600.0


@dataclass(frozen=True)
class WatchdogEvent:
    kind: str             # 'stale' (publish the failsafe) or 'recovered'
    age_s: float          # age of the newest good decision's frame
    last_stamp_s: float   # capture stamp of that frame
    last_sequence: int
    reason: str


class PerceptionWatchdog:
    STALE = 'stale'
    RECOVERED = 'recovered'

    def __init__(self, deadline_s: float, startup_s: float = 0.0):
        if not deadline_s > 0:
            raise ValueError(f'watchdog deadline must be > 0 s, got {deadline_s}')
        if not startup_s >= 0:
            raise ValueError(f'watchdog start-up allowance must be >= 0 s, got {startup_s}')
        self.deadline_s = float(deadline_s)
        self.startup_s = float(startup_s)   # 0: armed only by the first decision
        self._started_s: float | None = None
        self.armed = False
        self.stale = False
        self.failsafes = 0            # stale reports issued
        self.episodes = 0             # separate stale periods
        self._stamp_s = 0.0
        self._reference_s = 0.0       # the instant age is measured from
        self._sequence = -1

    def fresh(self, stamp_s: float, sequence: int, now_s: float) -> WatchdogEvent | None:
        """A good decision on the frame captured at stamp_s. Returns RECOVERED when it ends a stale period."""
        same_clock = abs(now_s - stamp_s) < SAME_CLOCK_S
        self._reference_s = stamp_s if same_clock else now_s
        self._stamp_s = stamp_s
        self._sequence = sequence
        self.armed = True
        if self.stale:
            self.stale = False
            return WatchdogEvent(self.RECOVERED, self.age(now_s), stamp_s, sequence,
                                 f'perception recovered: frame #{sequence} decided')
        return None

    def start(self, now_s: float) -> None:
        """The pipeline was activated at now_s: with a start-up allowance, no decision within startup_s of it
        is STALE too."""
        self._started_s = now_s

    def age(self, now_s: float) -> float:
        return now_s - self._reference_s

    def check(self, now_s: float) -> WatchdogEvent | None:
        """STALE (every call while stale) when the newest decision is older than the deadline."""
        if not self.armed:
            return self._check_startup(now_s)
        age = self.age(now_s)
        if age <= self.deadline_s:
            return None
        return self._stale(age, self._stamp_s, self._sequence,
                           f'perception stale: newest decision (frame #{self._sequence}) is {age * 1000:.0f} ms '
                           f'old, deadline {self.deadline_s * 1000:.0f} ms (camera, transport or embedder '
                           f'stalled or died)')

    def _check_startup(self, now_s: float) -> WatchdogEvent | None:
        if self._started_s is None or self.startup_s <= 0:
            return None
        waited = now_s - self._started_s
        if waited <= self.startup_s:
            return None
        return self._stale(waited, self._started_s, -1,
                           f'perception stale: no decision in the {waited:.1f} s since activation (start-up '
                           f'allowance {self.startup_s:g} s): camera, transport or embedder never delivered')

    def _stale(self, age: float, stamp_s: float, sequence: int, reason: str) -> WatchdogEvent:
        if not self.stale:
            self.episodes += 1
        self.stale = True
        self.failsafes += 1
        return WatchdogEvent(self.STALE, age, stamp_s, sequence, reason)
