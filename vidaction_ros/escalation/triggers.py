"""The trigger rules: which Actions are worth a second opinion (a change to a protective action, a score in
the unsure band, rate limited in message time)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .types import (ACTION_CODES, IGNORED_TRIGGERS_DEFAULT, PROTECTIVE_DEFAULT, TRIGGER_CHANGE, TRIGGER_UNSURE,
                    ActionEvent)


# -- trigger rules -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TriggerConfig:
    protective_codes: frozenset = frozenset(ACTION_CODES[n] for n in PROTECTIVE_DEFAULT)
    on_change: bool = True          # escalate changes to a protective action
    on_unsure: bool = True          # escalate scores inside [low, high]
    low: float = 0.20
    high: float = 0.40
    min_interval_s: float = 1.0     # between two unsure-band escalations, in message time
    ignored_triggers: frozenset = frozenset(IGNORED_TRIGGERS_DEFAULT)

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValueError(f'unsure band: need finite low <= high, got low={self.low}, high={self.high}')
        if not self.min_interval_s >= 0:
            raise ValueError(f'min_interval_s must be >= 0, got {self.min_interval_s}')


def protective_codes(names: Sequence[str]) -> frozenset:
    """Action codes from ACTION_* names ('STOP', ...): a typo fails here, naming the known names."""
    codes = set()
    for name in names:
        key = str(name).strip().upper()
        if key not in ACTION_CODES:
            raise ValueError(f'unknown action code name {name!r}; known: {sorted(ACTION_CODES)}')
        codes.add(ACTION_CODES[key])
    return frozenset(codes)


class TriggerRules:
    """Decides which Actions are worth a second opinion.

    * change: the Action changed (`changed`) to a protective code. Always escalated: it is the event the
      hook exists for, and the policy's hysteresis and minimum hold already bound how often it happens
      (the latest-wins queue bounds the work whatever happens).
    * unsure: the score (finite: the default action has none) lies in [low, high]; at most one such
      escalation per min_interval_s of message time, so a score hovering in the band for seconds does not
      escalate every frame. Message time (not wall time) keeps bag replay deterministic; time running
      backwards (a bag loop, a camera restart) resets the interval.
    """

    def __init__(self, config: TriggerConfig = TriggerConfig()):
        self.config = config
        self._last_unsure_s: float | None = None
        self._last_stamp_s: float | None = None

    def check(self, event: ActionEvent) -> str | None:
        """TRIGGER_CHANGE, TRIGGER_UNSURE or None. Stateful: an unsure escalation starts the interval."""
        c = self.config
        if self._last_stamp_s is not None and event.stamp_s < self._last_stamp_s:
            self._last_unsure_s = None
        self._last_stamp_s = event.stamp_s
        if event.trigger in c.ignored_triggers:
            return None
        if c.on_change and event.changed and event.action_code in c.protective_codes:
            return TRIGGER_CHANGE
        score = event.score
        if c.on_unsure and math.isfinite(score) and c.low <= score <= c.high:
            if self._last_unsure_s is not None and event.stamp_s - self._last_unsure_s < c.min_interval_s:
                return None
            self._last_unsure_s = event.stamp_s
            return TRIGGER_UNSURE
        return None
