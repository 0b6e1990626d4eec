"""The policy spec: the Action.msg constants, PolicyError, and the validated rules and policy (frozen dataclasses).

Pure (stdlib and the regions a rule names): no ROS, no YAML. `loader` builds these from a file, `engine` runs them.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from ..perception.regions import FULL_FRAME, Region

# Action.msg ACTION_* constants: stable integers for C++ controllers.
ACTION_CODES: Mapping[str, int] = MappingProxyType({
    'CONTINUE': 0, 'SLOW_DOWN': 1, 'HOVER': 2, 'STOP': 3, 'EMERGENCY_BRAKE': 4, 'FAILSAFE': 5, 'CUSTOM': 255,
})
# Action.msg PRIORITY_* constants; a rule's priority may be one of these names or any integer 1..255.
PRIORITY_DEFAULT = 0
PRIORITY_NAMES: Mapping[str, int] = MappingProxyType({'LOW': 50, 'MEDIUM': 100, 'HIGH': 200, 'CRITICAL': 255})
# Action.msg TRIGGER_* constants used by the policy (TRIGGER_WATCHDOG belongs to the node's staleness check).
TRIGGER_DEFAULT = 'default'
TRIGGER_PROMPT = 'prompt'
TRIGGER_MEMORY = 'memory'
TRIGGER_HOLD = 'hold'

SCORE_KINDS = ('margin', 'softmax')
POLICY_VERSION = 1
# A memory rule trusts Observation.similarity_to_past only when Observation.lookback_s (the memory's
# lookback) is within this relative tolerance of the rule's lookback_s: a similarity to the scene 10 s ago
# says nothing about a 2 s rule. The memory itself matches the past frame within +-lookback/2.
LOOKBACK_REL_TOL = 0.25
# A rule, once active, is released only after its evidence has stayed past exit for this long (message time),
# unless the rule sets min_clear_s. Half a second is five frames at 10 Hz: a detector missing a person for a
# frame or two no longer toggles STOP -> CONTINUE -> STOP, and the robot resumes at most this much later.
MIN_CLEAR_DEFAULT_S = 0.5


# -- errors ------------------------------------------------------------------------------------------------
class PolicyError(ValueError):
    """A policy file is invalid. The message names the file (or "<dict>"), the field path (e.g.
    ``actions[1].enter``) and what was expected versus what was found."""

    def __init__(self, source: str, path: str, expected: str, got: str):
        self.source, self.path, self.expected, self.got = source, path, expected, got
        super().__init__(f'{source}: {path}: expected {expected}, got {got}')


# -- spec --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DefaultAction:
    name: str
    code: int


@dataclass(frozen=True)
class PromptRule:
    """A rule that scores the frame (or one region) against free-text prompts."""
    name: str
    code: int
    priority: int
    prompts: tuple[str, ...]
    contrast: tuple[str, ...] = ()
    region: str = FULL_FRAME
    score: str = 'margin'
    temperature: float | None = None
    enter: float = 0.0
    exit: float = 0.0
    min_hold_s: float = 0.0
    cooldown_s: float = 0.0
    min_clear_s: float = MIN_CLEAR_DEFAULT_S
    index: int = 0                     # position in `actions` (file order breaks priority ties)

    @property
    def path(self) -> str:
        return f'actions[{self.index}]'


@dataclass(frozen=True)
class TemporalRule:
    """A rule that fires when the scene differs from the scene `lookback_s` ago (similarity drops)."""
    name: str
    code: int
    priority: int
    lookback_s: float
    below_similarity: float
    exit_similarity: float
    min_hold_s: float = 0.0
    cooldown_s: float = 0.0
    min_clear_s: float = MIN_CLEAR_DEFAULT_S
    index: int = 0                     # position in `temporal`

    @property
    def path(self) -> str:
        return f'temporal[{self.index}]'


@dataclass(frozen=True)
class PolicySpec:
    version: int
    default_action: DefaultAction
    regions: Mapping[str, Region]
    actions: tuple[PromptRule, ...]
    temporal: tuple[TemporalRule, ...]
    source: str = '<dict>'

    @property
    def rules(self) -> tuple:
        """All rules in tie-break order: `actions` in file order, then `temporal` in file order."""
        return self.actions + self.temporal


def thresholds(rule) -> tuple[float, float]:
    """(enter, exit) of a rule on its own score scale: a prompt rule's score rises to enter, a temporal
    rule's similarity falls to below_similarity."""
    if isinstance(rule, TemporalRule):
        return rule.below_similarity, rule.exit_similarity
    return rule.enter, rule.exit
