"""Policy: embeddings and memory context into one decision per frame (pure cores, no rclpy).

Owns the YAML policy file (its spec and validation), calibrated scoring of prompts against contrasts,
hysteresis, hold and cooldown, temporal rules over memory, and the perception watchdog (`watchdog`).

May import: `vidaction_ros.perception.regions` (the regions a rule names) and the shared helpers. The package
exports its API, so callers write `from vidaction_ros.policy import PolicyEngine, load_policy`.
"""

from .engine import (
    ACTION_CODES, PRIORITY_DEFAULT, PRIORITY_NAMES, TRIGGER_DEFAULT, TRIGGER_PROMPT, TRIGGER_MEMORY,
    TRIGGER_HOLD, SCORE_KINDS, POLICY_VERSION, LOOKBACK_REL_TOL, PolicyError, DefaultAction, PromptRule,
    TemporalRule, PolicySpec, load_policy, parse_policy, score_margin, score_softmax, Observation, Decision,
    PolicyEngine,
)
from .watchdog import (
    SAME_CLOCK_S, WatchdogEvent, PerceptionWatchdog,
)

__all__ = [
    'ACTION_CODES', 'PRIORITY_DEFAULT', 'PRIORITY_NAMES', 'TRIGGER_DEFAULT', 'TRIGGER_PROMPT',
    'TRIGGER_MEMORY', 'TRIGGER_HOLD', 'SCORE_KINDS', 'POLICY_VERSION', 'LOOKBACK_REL_TOL', 'PolicyError',
    'DefaultAction', 'PromptRule', 'TemporalRule', 'PolicySpec', 'load_policy', 'parse_policy',
    'score_margin', 'score_softmax', 'Observation', 'Decision', 'PolicyEngine', 'SAME_CLOCK_S',
    'WatchdogEvent', 'PerceptionWatchdog',
]
