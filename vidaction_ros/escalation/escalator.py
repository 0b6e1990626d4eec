"""Escalation off the hot path: hand a decided frame to a bigger, slower analyser and publish its answer
separately, without ever making the policy wait (pure core: numpy and the standard library, no ROS).

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
  vidaction_ros.escalation.second_opinion (runs offline here) and vidaction_ros.escalation.vlm_analyser (a local VLM from a path).
"""
from __future__ import annotations

import collections
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

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


# -- questions -----------------------------------------------------------------------------------------------
def region_words(region: str) -> str:
    """'near_zone' -> 'near zone' (region names are identifiers; questions are English)."""
    return re.sub(r'[_\-]+', ' ', region).strip()


def check_question_template(template: str) -> str:
    """Fail at startup on a template that would fail at every escalation."""
    if not template.strip():
        raise ValueError('question template must not be empty')
    try:
        template.format(prompt='p', region='r', where=' in the r', action='STOP')
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f'question template {template!r}: {err!r}; available fields: '
                         f'{{{"}, {".join(QUESTION_FIELDS)}}}') from None
    return template


def build_question(template: str, event: ActionEvent, prompt: str) -> str:
    region = region_words(event.region)
    return template.format(prompt=prompt, region=region, where=f' in the {region}' if region else '',
                           action=event.action)


def analysis_context(event: ActionEvent, regions: Mapping[str, Any],
                     action_rules: Mapping[str, RuleInfo]) -> dict[str, Any]:
    """What an analyser gets besides the frame and the question: the action, its prompts and contrast
    prompts from the policy file, and the region polygon (None = full frame)."""
    info = action_rules.get(event.action, RuleInfo())
    prompt = event.matched_prompt or (info.prompts[0] if info.prompts else '')
    return {'action': event.action, 'action_code': event.action_code, 'trigger': event.trigger,
            'prompt': prompt, 'prompts': info.prompts or ((prompt,) if prompt else ()),
            'contrast': info.contrast, 'region_name': event.region,
            'region': regions.get(event.region) if event.region else None,
            'score': event.score, 'threshold': event.threshold, 'stamp_s': event.stamp_s,
            'frame_sequence': event.frame_sequence}


def question_for(template: str, event: ActionEvent, context: Mapping[str, Any]) -> str:
    # A memory rule has no prompt: ask about the action itself.
    prompt = context['prompt'] or f'a reason to {event.action.lower().replace("_", " ")} now'
    return build_question(template, event, prompt)


# -- frames --------------------------------------------------------------------------------------------------
class FrameRing:
    """The last `capacity` frames by sequence number. Thread-safe; put() and get() are O(1).

    Frames are kept as given: the caller hands in an array it owns (a private copy from the shared-memory
    ring, a decoded image, or the camera's own array in composed mode, which is never written again)."""

    def __init__(self, capacity: int = 8):
        if capacity < 1:
            raise ValueError(f'frame ring capacity must be >= 1, got {capacity}')
        self.capacity = capacity
        self._frames: collections.OrderedDict[int, tuple[float, np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.newest: int | None = None
        self.restarts = 0

    def put(self, sequence: int, stamp_s: float, frame: np.ndarray) -> None:
        with self._lock:
            if self.newest is not None and sequence < self.newest:
                # The camera restarted (sequences start at 0 again): old numbers now name other frames.
                self._frames.clear()
                self.restarts += 1
            self._frames[sequence] = (stamp_s, frame)
            self._frames.move_to_end(sequence)
            while len(self._frames) > self.capacity:
                self._frames.popitem(last=False)
            self.newest = sequence

    def get(self, sequence: int) -> np.ndarray | None:
        with self._lock:
            item = self._frames.get(sequence)
            return None if item is None else item[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)


# -- the queue -----------------------------------------------------------------------------------------------
@dataclass
class Job:
    item: Any
    enqueued: float                 # time.monotonic() at submit
    dropped_before: int = 0         # filled in when the worker takes it


class LatestWinsWorker:
    """One worker thread behind one waiting slot; submit() never blocks the caller.

    While `handle` runs, a submitted job waits in the slot; a newer one replaces it (the replaced job is
    counted in `dropped` and in the next handled job's `dropped_before`). An exception in `handle` is
    logged and the worker carries on. `nice` (Linux) lowers the worker thread's CPU priority, so on a
    loaded machine the hot-path processes win the CPU; threads it starts (OpenCV, torch pools created
    lazily from it) inherit the niceness."""

    def __init__(self, handle: Callable[[Job], None], name: str = 'escalation-worker', nice: int = 0,
                 logger=None):
        if not 0 <= nice <= 19:
            raise ValueError(f'nice must be in 0..19, got {nice}')
        self._handle = handle
        self._nice = nice
        self._log = logger or logging.getLogger('vidaction_ros.escalation')
        self._cond = threading.Condition()
        self._pending: Job | None = None
        self._dropped_since = 0
        self._stop = False
        self.busy = False
        self.submitted = 0
        self.dropped = 0
        self.handled = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> bool:
        """Queue `item`; False when it replaced a waiting job (that one is dropped). Never blocks."""
        job = Job(item, time.monotonic())
        with self._cond:
            if self._stop:
                raise RuntimeError('worker is closed')
            replaced = self._pending is not None
            if replaced:
                self.dropped += 1
                self._dropped_since += 1
            self._pending = job
            self.submitted += 1
            self._cond.notify()
        return not replaced

    def _run(self) -> None:
        if self._nice:
            try:
                # Linux: a thread is a task with its own nice value (setpriority on its TID).
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
            except (OSError, AttributeError) as err:
                self._log.warning(f'could not lower the escalation worker priority: {err}')
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._pending is None:      # stopping and nothing left
                    return
                job, self._pending = self._pending, None
                job.dropped_before, self._dropped_since = self._dropped_since, 0
                self.busy = True
            try:
                self._handle(job)
            except Exception as err:   # noqa: BLE001 - one failed analysis must not stop the worker
                self.failed += 1
                self._log.error(f'escalation handler failed: {err!r}')
            finally:
                with self._cond:
                    self.busy = False
                    self.handled += 1
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is waiting or running (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self.busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 10.0, drain: bool = False) -> None:
        """Stop the worker. The job running finishes; a waiting one runs only with drain=True."""
        with self._cond:
            self._stop = True
            if not drain and self._pending is not None:
                self._pending = None
            self._cond.notify_all()
        self._thread.join(timeout)


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
