"""Escalation node (optional): a second opinion on protective or unsure Actions, off the hot path.

    camera/frame (FrameRef) ──▶ ring of the last `frame_ring` frames, resolved on arrival
    action (Action) ──▶ trigger rules ──▶ latest-wins worker ──▶ analyser ──▶ escalation (Escalation)

It is a separate node (its own process in the launch graph), so the policy never waits for it: the policy
publishes and forgets, and this node only listens. The analysis runs on one worker thread at a lowered CPU
priority (`worker_nice`) behind a single waiting slot: while it is busy, a newer escalation replaces the
waiting one and the replaced ones are counted in the next Escalation's `dropped_before`.

Frames are resolved as they arrive, not when the Action names them: the camera reuses a shared-memory slot
after `slots` (8) frames and the Action comes ~100 ms after its frame, so a late resolve would race the camera
under load. Resolving every frame costs one memcpy (640x480 bgr8: 0.9 MB, ~0.1-0.3 ms; composed mode: a
reference, no copy), and the ring holds `frame_ring` frames (8 x 0.9 MB).

Analysers (`analyser`): second_opinion (offline: HOG people detector + ImageNet classifier described in words,
checked against the action's prompts with MiniLM; vidaction_ros/escalation/second_opinion.py) or vlm (a local
vision-language model directory, `model_path`; vidaction_ros/escalation/vlm_analyser.py).
"""
from __future__ import annotations

import math
import time

from .. import qos
from ..conversions import to_seconds
from ..diagnostics import DiagnosticsPublisher, RateMeter, health
from ..escalation import (DEFAULT_QUESTION, PROTECTIVE_DEFAULT, VERDICT_AGREE, VERDICT_DISAGREE, ActionEvent,
                          EscalationResult, Escalator, RuleInfo, TriggerConfig, TriggerRules,
                          check_question_template, protective_codes)
from ..transport.frame_store import FrameLost
from ..ingest.image_codec import ImageFormatError
from ..msg import Action, Escalation, FrameRef
from ..params import Param, ParameterError
from ..paths import resolve_policy_file
from ..stats import LatencyWindow
from ..transport.frame_transport import host_array, resolve
from .lifecycle import ManagedNode
from .runtime import main_for

ANALYSERS = ('second_opinion', 'vlm')

PARAMS = [
    Param('analyser', 'second_opinion', 'second_opinion (offline: detector + classifier described in words, '
          'checked against the prompt) or vlm (a local vision-language model from model_path)',
          choices=ANALYSERS),
    Param('model_path', '', 'vlm: a transformers image-text-to-text model directory (save_pretrained output)'),
    Param('device', 'cpu', 'vlm: cpu or cuda', choices=('cpu', 'cuda')),
    Param('dtype', '', 'vlm: fp32 / fp16 / bf16 ("" = fp32 on cpu, fp16 on cuda)',
          choices=('', 'fp32', 'fp16', 'bf16')),
    Param('max_new_tokens', 16, 'vlm: at most this many generated tokens per answer', 1, 1024),
    Param('system_prompt', '', 'vlm: optional system message before the question'),
    Param('threads', 1, 'CPU threads of the analyser (torch, onnxruntime, OpenCV) in this process', 1, 64),
    Param('policy_file', '', 'policy YAML: the regions and each action\'s prompts and contrast prompts the '
          'analyser checks ("" = the package default; use the policy node\'s file)'),
    Param('question_template', DEFAULT_QUESTION, 'question asked about the frame; fields {prompt} (the matched '
          'prompt), {region}, {where} (" in the <region>" or ""), {action}', allow_empty=False),
    Param('escalate_changes', True, 'escalate every change to a protective action'),
    Param('protective_actions', list(PROTECTIVE_DEFAULT), 'Action codes (ACTION_* names) that count as '
          'protective for escalate_changes'),
    Param('escalate_unsure', True, 'escalate Actions whose score lies in [low, high]'),
    Param('low', 0.20, 'lower bound of the unsure score band (the policy\'s score scale)', -2.0, 2.0),
    Param('high', 0.40, 'upper bound of the unsure score band', -2.0, 2.0),
    Param('min_interval_s', 1.0, 'at most one unsure-band escalation per this many seconds of message time',
          0.0, 3600.0),
    Param('frame_ring', 8, 'frames kept (resolved on arrival) for the Actions that name them', 1, 300),
    Param('worker_nice', 10, 'nice value of the analysis thread (Linux): the hot path wins the CPU', 0, 19),
    Param('log_answers', True, 'log every Escalation published', read_only=False),
]

_VERDICT_CODES = {'unsure': Escalation.VERDICT_UNSURE, VERDICT_AGREE: Escalation.VERDICT_AGREE,
                  VERDICT_DISAGREE: Escalation.VERDICT_DISAGREE}


def create_analyser(p: dict, logger=None):
    """The analyser the parameters name (loaded now: a missing model fails at configure, naming the path)."""
    if p['analyser'] == 'second_opinion':
        from ..escalation.second_opinion import SecondOpinionAnalyser
        return SecondOpinionAnalyser(threads=p['threads'])
    from ..escalation.vlm_analyser import LocalVlmAnalyser
    return LocalVlmAnalyser(p['model_path'], max_new_tokens=p['max_new_tokens'], device=p['device'],
                            dtype=p['dtype'], system_prompt=p['system_prompt'], logger=logger)


def action_event(msg: Action) -> ActionEvent:
    return ActionEvent(stamp_s=to_seconds(msg.header.stamp), frame_sequence=int(msg.frame_sequence),
                       action=msg.action, action_code=int(msg.action_code), trigger=msg.trigger,
                       changed=bool(msg.changed), score=float(msg.score), threshold=float(msg.threshold),
                       matched_prompt=msg.matched_prompt, region=msg.region, source=msg)


def escalation_msg(result: EscalationResult, analyser_name: str) -> Escalation:
    action: Action = result.event.source
    answer = result.answer
    msg = Escalation()
    msg.header = action.header
    msg.frame_sequence = action.frame_sequence
    msg.trigger = result.trigger
    msg.action = action.action
    msg.action_code = action.action_code
    msg.matched_prompt = action.matched_prompt
    msg.region = action.region
    msg.score = action.score
    msg.threshold = action.threshold
    msg.analyser = analyser_name
    msg.question = result.question
    msg.answer = answer.text
    msg.verdict = _VERDICT_CODES[answer.verdict]
    msg.confidence = float(answer.confidence)
    msg.support = float(answer.support)
    msg.queue_ms = float(result.queue_ms)
    msg.analysis_ms = float(result.analysis_ms)
    msg.latency_ms = float(result.latency_ms)
    msg.dropped_before = int(result.dropped_before)
    return msg


class EscalationNode(ManagedNode):
    PARAMS = PARAMS

    def __init__(self, name: str = 'escalation', analyser=None, **kwargs):
        """analyser: an object with `name` and `analyse(frame, question, context)` used instead of the one the
        parameters name (composition, tests)."""
        super().__init__(name, **kwargs)
        p = self.p
        if p['low'] > p['high']:
            raise ParameterError(f"parameter 'low' ({p['low']}) must not exceed 'high' ({p['high']})")
        check_question_template(p['question_template'])
        self._codes = protective_codes(p['protective_actions'])   # a typo fails here, naming the known codes
        self._given_analyser = analyser
        self.analyser = None
        self.escalator: Escalator | None = None
        self.lost = 0
        self.resolve_ms = LatencyWindow()
        self.latency = LatencyWindow()
        self._rates = RateMeter()
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostics)
        if p['autostart']:
            self.bring_up()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def configure(self) -> None:
        from ..policy import load_policy
        p = self.p
        spec = load_policy(resolve_policy_file(p['policy_file']))    # PolicyError names the file and field
        rules = {r.name: RuleInfo(tuple(r.prompts), tuple(r.contrast)) for r in spec.actions}
        if self._given_analyser is None:
            self._limit_threads(p['threads'])
        started = time.monotonic()
        self.analyser = self._given_analyser or create_analyser(p, self.get_logger())
        self.analyser_name = getattr(self.analyser, 'description', self.analyser.name)
        trigger = TriggerConfig(protective_codes=self._codes, on_change=p['escalate_changes'],
                                on_unsure=p['escalate_unsure'], low=p['low'], high=p['high'],
                                min_interval_s=p['min_interval_s'])
        self.escalator = Escalator(self.analyser, self._publish, TriggerRules(trigger),
                                   question_template=p['question_template'], ring_size=p['frame_ring'],
                                   regions=spec.regions, action_rules=rules, nice=p['worker_nice'],
                                   logger=self.get_logger())
        self.publisher = self.own(self.create_publisher(Escalation, 'escalation', qos.ACTION))
        # Best effort, newest wins, like the embedder's live queue: this node must never hold the camera up.
        self.own(self.create_subscription(FrameRef, 'camera/frame', self._on_frame, qos.FRAME))
        self.own(self.create_subscription(Action, 'action', self._on_action, qos.ACTION))
        self.get_logger().info(
            f"escalation up: analyser {self.analyser_name} ready in {time.monotonic() - started:.1f} s; "
            f"changes to {sorted(p['protective_actions'])}: {p['escalate_changes']}; unsure band "
            f"[{p['low']}, {p['high']}]: {p['escalate_unsure']} (every >= {p['min_interval_s']} s)")

    def cleanup(self) -> None:
        if self.escalator is not None:
            self.escalator.close()
        self.escalator = None
        self.analyser = None

    @staticmethod
    def _limit_threads(threads: int) -> None:
        # Process-wide, and this process runs only this node: keep the analysis off the hot path's cores.
        import cv2
        cv2.setNumThreads(threads)
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            pass

    # -- inputs ------------------------------------------------------------------------------------------
    def _on_frame(self, ref: FrameRef) -> None:
        if not self.active:
            return
        started = time.perf_counter()
        try:
            # shm: a private copy; inproc: the camera's array (never written again); cuda: copied to the host
            image = host_array(resolve(ref))
        except (FrameLost, ImageFormatError) as err:
            self.lost += 1
            self.get_logger().warning(f'frame {ref.sequence} lost: {err}', throttle_duration_sec=5.0)
            return
        self.resolve_ms.add((time.perf_counter() - started) * 1e3)
        self.escalator.on_frame(int(ref.sequence), to_seconds(ref.header.stamp), image)

    def _on_action(self, msg: Action) -> None:
        if not self.active:
            return
        trigger = self.escalator.on_action(action_event(msg))
        if trigger is not None:
            self.get_logger().info(f'escalating frame {msg.frame_sequence} ({msg.action}, {trigger}) to '
                                   f'{self.analyser_name}')

    # -- output (worker thread) --------------------------------------------------------------------------
    def _publish(self, result: EscalationResult) -> None:
        msg = escalation_msg(result, self.analyser_name)
        if self.context.ok():
            self.publisher.publish(msg)
        self.latency.add(msg.latency_ms)
        if self.get_parameter('log_answers').value:
            score = '' if math.isnan(msg.score) else f' score {msg.score:.3f}'
            self.get_logger().info(
                f't={to_seconds(msg.header.stamp):.2f} #{msg.frame_sequence} {msg.action}{score} -> '
                f'{result.answer.verdict} ({msg.confidence:.2f}) in {msg.latency_ms:.0f} ms '
                f'(queue {msg.queue_ms:.0f}, dropped before {msg.dropped_before}): {msg.answer}')

    def _diagnostics(self):
        counts = {'lost': self.lost}
        if self.escalator is not None:
            # Escalations replaced while the analyser was busy are the design, not a fault: named so that
            # health() does not warn about them as it does about dropped frames.
            counts.update({('skipped_busy' if k == 'dropped' else k): v for k, v in self.escalator.counts.items()})
        info = {'lifecycle': 'active' if self.active else 'inactive' if self.configured else 'unconfigured',
                'analyser': getattr(self, 'analyser_name', ''),
                'busy': bool(self.escalator and self.escalator.worker.busy)}
        latency = {f'escalation_{k}': v for k, v in self.latency.summary().items()}
        latency.update({f'frame_resolve_{k}': v for k, v in self.resolve_ms.summary().items()})
        return health(counts, self._rates.rates(counts, time.monotonic()), latency, info)


def main(args=None) -> int:
    return main_for(EscalationNode)


if __name__ == '__main__':
    raise SystemExit(main())
