"""The Escalator: ties the trigger rules, the frame ring, the latest-wins worker and an analyser together and
publishes each second opinion (pure core: numpy and the standard library, no ROS)."""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from .questions import analysis_context, check_question_template, question_for
from .triggers import TriggerRules
from .types import DEFAULT_QUESTION, VERDICT_UNSURE, ActionEvent, Analyser, Answer, EscalationResult, RuleInfo
from .worker import FrameRing, Job, LatestWinsWorker


# -- the core ------------------------------------------------------------------------------------------------
class Escalator:
    """Trigger rules + frame ring + worker + analyser; results go to `publish(EscalationResult)` (called on
    the worker thread).

    regions: name -> vidaction_ros.perception.regions.Region (the policy's); rules: action name -> RuleInfo. Both
    feed the analyser's context, so it can check "a person in the near zone" against the same polygon
    the policy used.
    """

    # Actions whose frame has not arrived yet wait this many frames at most (topics are not ordered with
    # respect to each other; in practice the frame arrives ~100 ms before its Action).
    MAX_WAITING = 4

    def __init__(self, analyser: Analyser, publish: Callable[[EscalationResult], None],
                 rules: TriggerRules | None = None, question_template: str = DEFAULT_QUESTION,
                 ring_size: int = 8, regions: Mapping[str, Any] | None = None,
                 action_rules: Mapping[str, RuleInfo] | None = None, nice: int = 0, logger=None):
        self.analyser = analyser
        self.publish = publish
        self.rules = rules or TriggerRules()
        self.question_template = check_question_template(question_template)
        self.ring = FrameRing(ring_size)
        self.regions = dict(regions or {})
        self.action_rules = dict(action_rules or {})
        self.log = logger or logging.getLogger('vidaction_ros.escalation')
        self.counts = {'frames': 0, 'actions': 0, 'escalated': 0, 'dropped': 0, 'frame_missing': 0,
                       'published': 0, 'failed': 0}
        self._waiting: collections.OrderedDict[int, tuple[ActionEvent, str, float]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.worker = LatestWinsWorker(self._analyse, nice=nice, logger=self.log)

    # -- inputs (the node's executor thread) ---------------------------------------------------------------
    def on_frame(self, sequence: int, stamp_s: float, frame: np.ndarray) -> None:
        self.ring.put(sequence, stamp_s, frame)
        with self._lock:
            self.counts['frames'] += 1
            ready = self._waiting.pop(sequence, None)
            # Waiting Actions whose frame the ring has passed will never get it.
            stale = [s for s in self._waiting if s < sequence - self.MAX_WAITING]
            for s in stale:
                del self._waiting[s]
                self.counts['frame_missing'] += 1
        if ready is not None:
            event, trigger, arrived = ready
            self._submit(event, trigger, frame, arrived)

    def on_action(self, event: ActionEvent) -> str | None:
        """The trigger that escalated `event`, or None. Returns at once: the analysis runs on the worker."""
        arrived = time.monotonic()
        with self._lock:
            self.counts['actions'] += 1
        trigger = self.rules.check(event)
        if trigger is None:
            return None
        frame = self.ring.get(event.frame_sequence)
        if frame is None:
            newest = self.ring.newest
            with self._lock:
                if newest is None or event.frame_sequence > newest:
                    self._waiting[event.frame_sequence] = (event, trigger, arrived)
                    while len(self._waiting) > self.MAX_WAITING:
                        self._waiting.popitem(last=False)
                        self.counts['frame_missing'] += 1
                    return trigger
                self.counts['frame_missing'] += 1
            self.log.warning(f'escalation of frame {event.frame_sequence} ({event.action}, {trigger}) skipped: '
                             f'the frame is no longer in the ring of {self.ring.capacity} (raise frame_ring)')
            return None
        self._submit(event, trigger, frame, arrived)
        return trigger

    def _submit(self, event: ActionEvent, trigger: str, frame: np.ndarray, arrived: float) -> None:
        with self._lock:
            self.counts['escalated'] += 1
        if not self.worker.submit((event, trigger, frame, arrived)):
            with self._lock:
                self.counts['dropped'] += 1

    # -- the worker thread ---------------------------------------------------------------------------------
    def context_for(self, event: ActionEvent) -> dict[str, Any]:
        return analysis_context(event, self.regions, self.action_rules)

    def question_for(self, event: ActionEvent, context: Mapping[str, Any]) -> str:
        return question_for(self.question_template, event, context)

    def _analyse(self, job: Job) -> None:
        event, trigger, frame, arrived = job.item
        started = time.monotonic()
        context = self.context_for(event)
        question = self.question_for(event, context)
        try:
            answer = self.analyser.analyse(frame, question, context)
        except Exception as err:   # noqa: BLE001 - an analyser failure is reported, not fatal
            with self._lock:
                self.counts['failed'] += 1
            self.log.error(f'analyser {self.analyser.name} failed on frame {event.frame_sequence}: {err!r}')
            answer = Answer(VERDICT_UNSURE, 0.0, f'analyser error: {err}')
        done = time.monotonic()
        result = EscalationResult(event=event, trigger=trigger, question=question, answer=answer,
                                  analyser=self.analyser.name, queue_ms=(started - arrived) * 1e3,
                                  analysis_ms=(done - started) * 1e3, dropped_before=job.dropped_before)
        self.publish(result)
        with self._lock:
            self.counts['published'] += 1

    def close(self, timeout: float = 10.0) -> None:
        self.worker.close(timeout)
