"""The escalation core's vocabulary: verdict and trigger names, action codes and defaults, the default question,
the Action event, rule info, answers and results, the Analyser protocol and its error (pure, no ROS)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np


VERDICT_UNSURE = 'unsure'
VERDICT_AGREE = 'agree'
VERDICT_DISAGREE = 'disagree'
VERDICTS = (VERDICT_UNSURE, VERDICT_AGREE, VERDICT_DISAGREE)

TRIGGER_CHANGE = 'change'
TRIGGER_UNSURE = 'unsure'

# Action.action_code values (msg/Action.msg), repeated here so the core needs no generated messages.
ACTION_CODES = {'CONTINUE': 0, 'SLOW_DOWN': 1, 'HOVER': 2, 'STOP': 3, 'EMERGENCY_BRAKE': 4, 'FAILSAFE': 5,
                'CUSTOM': 255}
PROTECTIVE_DEFAULT = ('SLOW_DOWN', 'HOVER', 'STOP', 'EMERGENCY_BRAKE')
# Watchdog failsafes say "perception is stale": there is no fresh frame to ask anybody about.
IGNORED_TRIGGERS_DEFAULT = ('watchdog',)

DEFAULT_QUESTION = 'Does this image show {prompt}{where}? Answer yes or no.'
QUESTION_FIELDS = ('prompt', 'region', 'where', 'action')


class AnalyserUnavailable(RuntimeError):
    """The analyser cannot be loaded (missing model, missing package): says which and what to do."""


# -- what travels through the core ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ActionEvent:
    """The fields of an Action the core needs (the node converts the message)."""
    stamp_s: float                  # capture time of the deciding frame (message time)
    frame_sequence: int
    action: str
    action_code: int
    trigger: str = ''
    changed: bool = False
    score: float = math.nan
    threshold: float = math.nan
    matched_prompt: str = ''
    region: str = ''
    source: Any = None              # the caller's original message, carried through untouched (exact header)


@dataclass(frozen=True)
class RuleInfo:
    """What the policy file says about an action: its prompts and contrast prompts (for the analyser)."""
    prompts: tuple[str, ...] = ()
    contrast: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    """An analyser's answer. `confidence` is how sure it is of `verdict` (0 for unsure); `support` its
    estimate (0..1) that the frame shows the prompt, NaN when it has none."""
    verdict: str
    confidence: float
    text: str
    support: float = math.nan
    elapsed_ms: float = math.nan
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f'verdict must be one of {VERDICTS}, got {self.verdict!r}')
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f'confidence must be in [0, 1], got {self.confidence!r}')


class Analyser(Protocol):
    name: str

    def analyse(self, frame_bgr: np.ndarray, question: str, context: Mapping[str, Any]) -> Answer: ...


@dataclass(frozen=True)
class EscalationResult:
    """One published second opinion."""
    event: ActionEvent
    trigger: str
    question: str
    answer: Answer
    analyser: str
    queue_ms: float
    analysis_ms: float
    dropped_before: int

    @property
    def latency_ms(self) -> float:
        return self.queue_ms + self.analysis_ms
