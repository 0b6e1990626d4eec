"""Escalation: a second opinion from a bigger, slower analyser, off the hot path (pure cores, no rclpy).

A decided frame goes to the analyser and its answer is published separately, without ever making the policy
wait (the core: numpy and the standard library).

    Action ──▶ TriggerRules ──▶ Escalator ──▶ LatestWinsWorker ──▶ Analyser.analyse(frame, question, context)
    FrameRef ─▶ FrameRing ─────────┘            (one thread, one waiting slot)          └──▶ publish(result)

* TriggerRules: escalate an Action when it *changes* to a protective action (STOP, ...), or when its score
  lies in an "unsure" band [low, high] (rate limited by min_interval_s of message time).
* FrameRing: the last K frames, kept on arrival, so the frame an Action names is still there when the
  Action arrives (~100 ms later), even though the camera's shared-memory slot may be reused by then.
* LatestWinsWorker: a single waiting slot in front of one worker thread. submit() never blocks: while the
  analyser is busy, a newer job replaces the waiting one (the freshest frame is the one worth a second
  opinion) and the replaced job is counted; the count travels with the next result (`dropped_before`).
* Analyser: anything with `name` and `analyse(frame_bgr, question, context) -> Answer`; see
  vidaction_ros.escalation.second_opinion (runs offline here) and vidaction_ros.escalation.vlm_analyser
  (a local VLM from a path).

Modules: `types` (verdicts, trigger names, action codes and defaults, events, answers, results, the Analyser
protocol, AnalyserUnavailable), `triggers` (TriggerConfig, TriggerRules), `questions` (question templates and
the analyser's context), `worker` (FrameRing, LatestWinsWorker) and `escalator` (the Escalator that ties
them together).

Owns the trigger rules, the frame ring, the latest-wins worker and the escalator that ties them together,
and the analysers (`second_opinion`, offline; `vlm_analyser`, a local vision-language model from a path).

May import: `vidaction_ros.perception` (the analysers reuse its models), `vidaction_ros.policy` and the
shared helpers. The package exports the core's API; the analysers are imported by module, since they load
models.
"""
from .escalator import Escalator
from .questions import analysis_context, build_question, check_question_template, question_for, region_words
from .triggers import TriggerConfig, TriggerRules, protective_codes
from .types import (
    VERDICT_UNSURE, VERDICT_AGREE, VERDICT_DISAGREE, VERDICTS, TRIGGER_CHANGE, TRIGGER_UNSURE, ACTION_CODES,
    PROTECTIVE_DEFAULT, IGNORED_TRIGGERS_DEFAULT, DEFAULT_QUESTION, QUESTION_FIELDS, AnalyserUnavailable,
    ActionEvent, RuleInfo, Answer, Analyser, EscalationResult,
)
from .worker import FrameRing, Job, LatestWinsWorker

__all__ = [
    'VERDICT_UNSURE', 'VERDICT_AGREE', 'VERDICT_DISAGREE', 'VERDICTS', 'TRIGGER_CHANGE', 'TRIGGER_UNSURE',
    'ACTION_CODES', 'PROTECTIVE_DEFAULT', 'IGNORED_TRIGGERS_DEFAULT', 'DEFAULT_QUESTION', 'QUESTION_FIELDS',
    'AnalyserUnavailable', 'ActionEvent', 'RuleInfo', 'Answer', 'Analyser', 'EscalationResult',
    'TriggerConfig', 'protective_codes', 'TriggerRules', 'region_words', 'check_question_template',
    'build_question', 'analysis_context', 'question_for', 'FrameRing', 'Job', 'LatestWinsWorker', 'Escalator',
]
