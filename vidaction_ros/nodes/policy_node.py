"""Action policy node: MemoryContext in, Action out (reliable QoS), one per decided frame.

Prompts are free text from the policy file, embedded once at startup by the same backend (text side
only) that embeds the frames, so both live in one space. A context from a different model is refused:
its vectors would be compared in the wrong space.
"""
from __future__ import annotations

import math
import time

from rclpy.duration import Duration

from .. import qos
from ..transport import intra_process
from ..perception.backends import create_backend
from ..conversions import ms_between, to_seconds, to_time, vector_from_msg
from ..diagnostics import DiagnosticsPublisher, RateMeter, health
from ..msg import Action, MemoryContext, RuleScore, SceneUnchanged
from ..params import Param
from ..paths import resolve_policy_file
from ..policy import Observation, PolicyEngine, load_policy
from ..policy.score_table import prompt_set_digest
from ..policy.spec import thresholds
from ..stats import LatencyWindow
from ..policy.watchdog import PerceptionWatchdog
from .embedder_node import BACKEND_PARAMS, backend_params
from .lifecycle import INTRA_DISPATCH, INTRA_PROCESS, ManagedNode
from .runtime import main_for

FAILSAFE_CODES = ('FAILSAFE', 'HOVER', 'STOP', 'EMERGENCY_BRAKE', 'SLOW_DOWN')

PARAMS = BACKEND_PARAMS + [
    INTRA_PROCESS,
    INTRA_DISPATCH,
    Param('policy_file', '', 'policy YAML: actions, prompts, thresholds, regions ("" = the package default)'),
    Param('log_decisions', 'all', 'log every decision (all), only changes (changes), or none',
          choices=('all', 'changes', 'none'), read_only=False),
    Param('watchdog_deadline_s', 0.5, 'publish the failsafe Action when the newest decision\'s frame is older than '
          'this (0 = off; the CPU default decides ~180 ms after capture at worst at 10 Hz)', 0.0, 60.0),
    Param('watchdog_period_s', 0.05, 'how often the watchdog looks, and repeats the failsafe while stale',
          0.005, 5.0),
    Param('watchdog_startup_s', 10.0, 'no decision this long after activation is stale too (a camera that never '
          'comes up: FAILSAFE, repeated every watchdog_period_s, never silence); 0 = armed by the first '
          'decision only', 0.0, 3600.0),
    Param('failsafe_action', 'FAILSAFE', 'Action.action name of the failsafe (e.g. HOVER for drones)'),
    Param('failsafe_code', 'FAILSAFE', 'Action code of the failsafe', choices=FAILSAFE_CODES),
    Param('failsafe_priority', 255, 'priority of the failsafe Action', 0, 255),
    Param('replay_history', False, 'keep up to 1000 Actions (transient-local) for slow or late-matched '
          'subscribers instead of 10 (lock-step replay sets it: a recorder must get every Action)'),
]


class PolicyNode(ManagedNode):
    PARAMS = PARAMS

    def __init__(self, name: str = 'policy', **kwargs):
        super().__init__(name, **kwargs)
        self.counts = {'received': 0, 'decided': 0, 'rejected': 0, 'changes': 0, 'failsafes': 0,
                       'unchanged_kept': 0, 'unchanged_ignored': 0, 'device_scored': 0, 'scores_foreign': 0}
        self.latency = LatencyWindow()
        self.backend = None
        self.watchdog = None
        self.policy_file = ''
        self._last_action = ''          # as published, failsafes included: `changed` is about the stream
        self._last_frame_id = ''
        self._last_sequence = 0
        self._last_decision: Action | None = None   # the newest per-frame decision (no failsafe, no copy)
        self._last_sent = (0.0, 0.0)   # (header stamp, node-clock time) of the newest per-frame Action
        self._rates = RateMeter()
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostics)
        if self.p['autostart']:
            self.bring_up()

    def configure(self) -> None:
        self.policy_file = resolve_policy_file(self.p['policy_file'])
        self.spec = load_policy(self.policy_file)   # PolicyError names the file and field
        self.backend = create_backend(self.p['backend'], load_images=False,
                                      **backend_params(self.p, self.get_logger()))
        self.backend.activate()
        self.engine = PolicyEngine(self.spec, self.backend.embed_texts, logger=self.get_logger())
        # Scores the embedder computed on its device are used when they belong to this very prompt set.
        self.scores_digest = prompt_set_digest(self.engine, self.backend.model_id)
        self.publisher = self.own(self.create_publisher(
            Action, 'action', qos.ACTION_REPLAY if self.p['replay_history'] else qos.ACTION))
        # Composed: memory/context handled on the memory node's thread when this node is free; its other
        # callbacks (unchanged scenes, the watchdog, transitions) take the same lock.
        self.own(intra_process.subscription(self, MemoryContext, 'memory/context', self._on_context, qos.EMBEDDING,
                                            self.p['intra_process'], self.inline_lock()))
        self.own(self.create_subscription(SceneUnchanged, 'camera/unchanged', self._on_unchanged, qos.EMBEDDING))
        self.get_logger().info(f"policy {self.policy_file} loaded: actions "
                               f"{[r.name for r in self.spec.actions]}")

    def activate(self) -> None:
        if self.p['watchdog_deadline_s'] > 0:
            # Armed by the first decision after activation: a fresh start is not a stale pipeline.
            self.watchdog = PerceptionWatchdog(self.p['watchdog_deadline_s'], self.p['watchdog_startup_s'])
            self.watchdog.start(self._now_s())
            self._watchdog_timer = self.create_timer(self.p['watchdog_period_s'], self._watchdog_tick)

    def deactivate(self) -> None:
        if self.watchdog is not None:
            self.destroy_timer(self._watchdog_timer)
            self.watchdog = None
        # Going silent on purpose still tells the controller: one failsafe, then nothing.
        if self._last_action and self.context.ok():   # at process exit the context is already down
            # Stamped on the frames' clock (media time in a replay): the newest stamp plus the time since.
            stamp_s, sent_at = self._last_sent
            self._publish_failsafe('policy deactivated: no further decisions until it is activated again',
                                   self._last_sequence, math.nan, stamp_s + self._now_s() - sent_at, planned=True)
            # At a stop the process ends right after this: give the reliable message its acknowledgements
            # (bounded), or a subscriber on a loaded machine may never receive it.
            self.publisher.wait_for_all_acked(Duration(seconds=1.0))

    def cleanup(self) -> None:
        self._last_decision = None
        if self.backend is not None:
            self.backend.deactivate()
        self.backend = None

    def _observation(self, context: MemoryContext) -> Observation:
        embedding = context.embedding
        if embedding.model != self.backend.model_id:
            raise ValueError(f'embedding from model {embedding.model!r}, but prompts were embedded with '
                             f'{self.backend.model_id!r}: set the same backend on embedder and policy')
        dim = self.backend.dim
        regions = {r.name: vector_from_msg(r.vector, dim, f'region {r.name!r}') for r in embedding.regions}
        similarity = context.similarity_to_past if context.has_past else None
        return Observation(stamp_s=to_seconds(context.header.stamp), sequence=embedding.sequence,
                           vector=vector_from_msg(embedding.vector, dim, 'embedding'), regions=regions,
                           similarity_to_past=similarity, lookback_s=context.lookback_s,
                           device_scores=self._device_scores(embedding))

    def _device_scores(self, embedding):
        if not embedding.scores:
            return None
        if embedding.scores_digest != self.scores_digest:
            # Another policy file or model on the embedder's side: its scores mean something else here.
            self.counts['scores_foreign'] += 1
            if self.counts['scores_foreign'] == 1:
                self.get_logger().warning(f'the embedder scores prompt set {embedding.scores_digest!r}, this policy '
                                          f'is {self.scores_digest!r} (another policy file or model): scoring the '
                                          f'vectors here')
            return None
        self.counts['device_scored'] += 1
        if self.counts['device_scored'] == 1:
            self.get_logger().info(f'deciding with the prompt scores the embedder computed on its device (prompt '
                                   f'set {self.scores_digest})')
        return {s.rule: (s.score, s.best_prompt) for s in embedding.scores}

    def _on_context(self, context: MemoryContext) -> None:
        if not self.active:
            return
        self.counts['received'] += 1
        try:
            decision = self.engine.decide(self._observation(context))
        except ValueError as err:
            self.counts['rejected'] += 1
            self.get_logger().error(f'cannot decide frame {context.embedding.sequence}: {err}',
                                    throttle_duration_sec=5.0)
            return
        times = context.embedding.times
        times.decided = to_time(time.time())
        msg = Action()
        msg.header = context.header
        msg.action = decision.action
        msg.action_code = decision.action_code
        msg.priority = decision.priority
        msg.trigger = decision.trigger
        msg.changed = decision.changed or decision.action != self._last_action
        msg.score = float(decision.score)
        msg.threshold = float(decision.threshold)
        msg.matched_prompt = decision.matched_prompt
        msg.region = decision.region
        msg.reason = decision.reason
        msg.frame_sequence = context.embedding.sequence
        msg.times = times
        msg.capture_to_embed_ms = ms_between(times.captured, times.embed_start)
        msg.embed_ms = ms_between(times.embed_start, times.embed_end)
        msg.embed_to_decide_ms = ms_between(times.embed_end, times.decided)
        msg.capture_to_decide_ms = ms_between(times.captured, times.decided)
        msg.evidence = ([context.past] if context.has_past else []) + list(context.neighbours)
        # The objects behind the decision: those in the deciding rule's region (all for the full frame).
        msg.detections = [d for d in context.embedding.detections
                          if not decision.region or decision.region in d.regions]
        msg.scores = self._rule_scores(decision)
        self.publisher.publish(msg)
        self._last_decision = msg
        self._sent(msg)
        self.counts['decided'] += 1
        self.counts['changes'] += int(decision.changed)
        self.latency.add(msg.capture_to_decide_ms)
        self._log(msg)

    def _rule_scores(self, decision) -> list[RuleScore]:
        out = []
        for rule in self.spec.rules:
            enter, exit_ = thresholds(rule)
            out.append(RuleScore(name=rule.name, score=float(decision.scores.get(rule.name, math.nan)),
                                 enter=float(enter), exit=float(exit_), active=rule.name in decision.active))
        return out

    def _sent(self, msg: Action) -> None:
        """Book-keeping after a per-frame Action (decided or kept): the stream's state and the watchdog."""
        self._last_action = msg.action
        self._last_frame_id = msg.header.frame_id
        self._last_sequence = msg.frame_sequence
        self._last_sent = (to_seconds(msg.header.stamp), self._now_s())
        if self.watchdog is not None:
            event = self.watchdog.fresh(to_seconds(msg.header.stamp), msg.frame_sequence, self._now_s())
            if event is not None:
                self.get_logger().warning(event.reason)

    def _on_unchanged(self, notice: SceneUnchanged) -> None:
        """The camera gated a frame as unchanged: keep the decision of the frame it is the same as."""
        with self.callback_lock:
            self._keep_unchanged(notice)

    def _keep_unchanged(self, notice: SceneUnchanged) -> None:
        if not self.active:
            return
        decided = self._last_decision
        if decided is None or decided.frame_sequence != notice.same_as_sequence:
            # That frame is still on its way (or was lost): its decision cannot be vouched for yet. A dead
            # embedder therefore still trips the watchdog, however static the scene.
            self.counts['unchanged_ignored'] += 1
            return
        msg = Action()
        for field in ('action', 'action_code', 'priority', 'score', 'threshold', 'matched_prompt', 'region',
                      'frame_sequence', 'detections', 'scores'):
            setattr(msg, field, getattr(decided, field))
        msg.header = notice.header
        msg.trigger = Action.TRIGGER_UNCHANGED
        msg.changed = msg.action != self._last_action     # e.g. back from a failsafe
        msg.reason = (f'scene unchanged since frame #{decided.frame_sequence} (gate score '
                      f'{notice.scene_change:.2f}): {decided.reason}')
        msg.times.captured = notice.captured
        msg.times.decided = to_time(time.time())
        msg.capture_to_embed_ms = msg.embed_ms = msg.embed_to_decide_ms = math.nan   # nothing was embedded
        msg.capture_to_decide_ms = ms_between(msg.times.captured, msg.times.decided)
        self.publisher.publish(msg)
        self._sent(msg)
        self.counts['unchanged_kept'] += 1

    def _now_s(self) -> float:
        # The node clock: wall time live, the bag's /clock under use_sim_time.
        return self.get_clock().now().nanoseconds * 1e-9

    def _watchdog_tick(self) -> None:
        with self.callback_lock:
            self._check_watchdog()

    def _check_watchdog(self) -> None:
        if not self.active or self.watchdog is None:
            return
        event = self.watchdog.check(self._now_s())
        if event is not None:
            # Stamped on the frames' clock (media time in a replay), as the newest frame's stamp + its age.
            self._publish_failsafe(event.reason, event.last_sequence, event.age_s * 1000.0,
                                   event.last_stamp_s + event.age_s)
            self.counts['failsafes'] = self.watchdog.failsafes

    def _publish_failsafe(self, reason: str, sequence: int, age_ms: float, stamp_s: float | None = None,
                          planned: bool = False) -> None:
        msg = Action()
        msg.header.stamp = to_time(self._now_s() if stamp_s is None else stamp_s)
        msg.header.frame_id = self._last_frame_id
        msg.action = self.p['failsafe_action']
        msg.action_code = getattr(Action, f"ACTION_{self.p['failsafe_code']}")
        msg.priority = self.p['failsafe_priority']
        msg.trigger = Action.TRIGGER_WATCHDOG
        msg.changed = msg.action != self._last_action
        msg.score = math.nan
        msg.threshold = float(self.p['watchdog_deadline_s'])
        msg.reason = reason
        msg.frame_sequence = max(sequence, 0)   # the newest frame that was decided
        msg.capture_to_decide_ms = float(age_ms)
        msg.capture_to_embed_ms = msg.embed_ms = msg.embed_to_decide_ms = math.nan
        self.publisher.publish(msg)
        if msg.changed and planned:   # a deactivation (shutdown): expected, not an error
            self.get_logger().info(f'{msg.action}: {reason}')
        elif msg.changed:             # logged once per state change, not at every repeat
            self.get_logger().error(f'{msg.action}: {reason}')
        self._last_action = msg.action

    def _diagnostics(self):
        info = {'lifecycle': 'active' if self.active else 'inactive' if self.configured else 'unconfigured',
                'policy_file': self.policy_file, 'model': self.backend.model_id if self.backend else '',
                'last_action': self._last_action,
                'watchdog': ('off' if self.watchdog is None else 'stale' if self.watchdog.stale else
                             'ok' if self.watchdog.armed else 'waiting for the first decision')}
        latency = {f'capture_to_action_{k}': v for k, v in self.latency.summary().items()}
        error = self.watchdog.stale and 'perception stale: failsafe Action published' if self.watchdog else ''
        return health(self.counts, self._rates.rates(self.counts, time.monotonic()), latency, info, error=error)

    def _log(self, msg: Action) -> None:
        mode = self.get_parameter('log_decisions').value
        if mode == 'none' or (mode == 'changes' and not msg.changed):
            return
        score = '' if math.isnan(msg.score) else f' score {msg.score:.3f}/{msg.threshold:.3f}'
        self.get_logger().info(f't={to_seconds(msg.header.stamp):.2f} #{msg.frame_sequence} {msg.action}'
                               f'{" (changed)" if msg.changed else ""}{score} '
                               f'latency {msg.capture_to_decide_ms:.1f} ms: {msg.reason}')


def main(args=None) -> int:
    return main_for(PolicyNode)


if __name__ == '__main__':
    raise SystemExit(main())
