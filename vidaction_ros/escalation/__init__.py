"""Escalation: a second opinion from a bigger, slower analyser, off the hot path (pure cores, no rclpy).

Owns the trigger rules, the frame ring, the latest-wins worker and the escalator that ties them together,
and the analysers (`second_opinion`, offline; `vlm_analyser`, a local vision-language model from a path).

May import: `vidaction_ros.perception` (the analysers reuse its models), `vidaction_ros.policy` and the
shared helpers. The package exports the core's API; the analysers are imported by module, since they load
models.
"""
from .escalator import (
    VERDICT_UNSURE, VERDICT_AGREE, VERDICT_DISAGREE, VERDICTS, TRIGGER_CHANGE, TRIGGER_UNSURE, ACTION_CODES,
    PROTECTIVE_DEFAULT, IGNORED_TRIGGERS_DEFAULT, DEFAULT_QUESTION, QUESTION_FIELDS, AnalyserUnavailable,
    ActionEvent, RuleInfo, Answer, Analyser, EscalationResult, TriggerConfig, protective_codes, TriggerRules,
    region_words, check_question_template, build_question, analysis_context, question_for, FrameRing, Job,
    LatestWinsWorker, Escalator,
)

__all__ = [
    'VERDICT_UNSURE', 'VERDICT_AGREE', 'VERDICT_DISAGREE', 'VERDICTS', 'TRIGGER_CHANGE', 'TRIGGER_UNSURE',
    'ACTION_CODES', 'PROTECTIVE_DEFAULT', 'IGNORED_TRIGGERS_DEFAULT', 'DEFAULT_QUESTION', 'QUESTION_FIELDS',
    'AnalyserUnavailable', 'ActionEvent', 'RuleInfo', 'Answer', 'Analyser', 'EscalationResult',
    'TriggerConfig', 'protective_codes', 'TriggerRules', 'region_words', 'check_question_template',
    'build_question', 'analysis_context', 'question_for', 'FrameRing', 'Job', 'LatestWinsWorker', 'Escalator',
]
