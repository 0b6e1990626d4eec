"""Policy: embeddings and memory context into one decision per frame (pure cores, no rclpy).

Owns the policy spec and its constants (`spec`), the YAML policy file and its validation (`loader`), calibrated
scoring of prompts against contrasts (`scoring`), hysteresis, hold and cooldown and temporal rules over memory
(`engine`), and the perception watchdog (`watchdog`).

May import: `vidaction_ros.perception.regions` (the regions a rule names) and the shared helpers. The package
exports its API, so callers write `from vidaction_ros.policy import PolicyEngine, load_policy`.
"""

from .spec import (
    ACTION_CODES, PRIORITY_DEFAULT, PRIORITY_NAMES, TRIGGER_DEFAULT, TRIGGER_PROMPT, TRIGGER_MEMORY,
    TRIGGER_HOLD, SCORE_KINDS, POLICY_VERSION, LOOKBACK_REL_TOL, MIN_CLEAR_DEFAULT_S, PolicyError, DefaultAction,
    PromptRule, TemporalRule, PolicySpec,
)
from .loader import (
    load_policy, parse_policy,
)
from .scoring import (
    score_margin, score_softmax,
)
from .engine import (
    Observation, Decision, PolicyEngine,
)
from .watchdog import (
    SAME_CLOCK_S, WatchdogEvent, PerceptionWatchdog,
)

__all__ = [
    'ACTION_CODES', 'PRIORITY_DEFAULT', 'PRIORITY_NAMES', 'TRIGGER_DEFAULT', 'TRIGGER_PROMPT',
    'TRIGGER_MEMORY', 'TRIGGER_HOLD', 'SCORE_KINDS', 'POLICY_VERSION', 'LOOKBACK_REL_TOL', 'MIN_CLEAR_DEFAULT_S',
    'PolicyError',
    'DefaultAction', 'PromptRule', 'TemporalRule', 'PolicySpec', 'load_policy', 'parse_policy',
    'score_margin', 'score_softmax', 'Observation', 'Decision', 'PolicyEngine', 'SAME_CLOCK_S',
    'WatchdogEvent', 'PerceptionWatchdog',
]
