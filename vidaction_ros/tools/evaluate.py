"""vidaction-eval: replay a rosbag2 bag through the real pipeline, deterministically, and report what fired.

    vidaction-eval BAG [--labels labels.yaml] [--out DIR] [--policy-file P] [--set NODE.PARAM=VALUE ...]
                   [--mode composed|processes] [--action NAME ...] [--before-s 1.0] [--after-s 2.0]
                   [--max-delay-s S]

1. Runs `vidaction_pipeline --lockstep --source BAG` (the four real nodes; composed in one child process by
   default, frames by reference; `--mode processes` runs four processes as `vidaction.launch.py` does):
   every frame of the bag's image topic is processed in order and stamped with its header stamp (message
   time), so two runs decide identically and the stamps line up with labels.
2. Records every Action with a real rclpy subscriber (the camera waits for it: lockstep_action_subscribers
   = 2), and every MemoryContext, from which a PolicyEngine over the same policy file and the same text
   model re-scores each rule on each frame (the Action carries only the deciding rule's score; the
   timeline shows every rule's). The re-scored decision is checked against the Action received.
3. Writes DIR/actions/ (rosbag2, MCAP by default): the Action stream, bag time = header stamp, our Action
   type registered from the installed .msg files; DIR/timeline.png; DIR/report.json; DIR/report.md;
   DIR/pipeline.log.

Metrics (vidaction_ros.tools.eval_metrics, which documents the matching rules): latency percentiles per stage
from the Actions' fields and, with labels, per evaluated action: event-level precision, recall, F1, lead
time (labelled start - first firing), false alarms, plus frame-level counts. Which action the labels are
about: --action, else the labels file's `action:`, else the policy's highest-priority rule.

DDS stays on this machine unless you say otherwise: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a
ROS_DOMAIN_ID from the process id are set when unset (as scripts/env.sh does).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .eval_metrics import (LATENCY_FIELDS, Labels, Tolerances, event_metrics, frame_metrics, latency_table,
                           load_labels)

ACTION_TOPIC = '/action'
ACTION_TYPE = 'vidaction_ros/msg/Action'
WATCHDOG = 'watchdog'          # Action.TRIGGER_WATCHDOG: failsafes are not per-frame decisions
STAGE_NAMES = {'capture_to_embed_ms': 'capture -> embed start', 'embed_ms': 'embed',
               'embed_to_decide_ms': 'embed end -> decided (memory + policy)',
               'capture_to_decide_ms': 'capture -> Action'}


class EvalError(RuntimeError):
    """The replay could not be run or did not complete; the message says why (and where the log is)."""


def ensure_local_dds(env=os.environ) -> None:
    """Keep discovery on loopback with a domain of our own, unless the user chose otherwise."""
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')


# -- the Action type for rosbags -------------------------------------------------------------------------------
def action_typestore():
    """rosbags' Jazzy type store plus every vidaction_ros message, from the installed .msg files (the RIHS01
    hashes then equal rosidl's)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    from ..paths import share_dir
    store = get_typestore(Stores.ROS2_JAZZY)
    msg_dir = share_dir() / 'msg'
    files = sorted(msg_dir.glob('*.msg'))
    if not files:
        raise EvalError(f'no .msg files in {msg_dir}: is vidaction_ros installed (scripts/setup_env.sh)?')
    types = {}
    for path in files:
        types.update(get_types_from_msg(path.read_text(encoding='utf-8'), f'vidaction_ros/msg/{path.stem}'))
    store.register(types)
    return store


def write_action_bag(path: Path, serialized: Sequence[tuple[int, bytes]], storage: str = 'mcap') -> None:
    """(bag time ns, CDR bytes as rclpy serialises them) -> a new rosbag2 bag with one /action topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from ..ingest.bags import BAG_VERSION
    store = action_typestore()
    writer = Writer(path, version=BAG_VERSION,
                    storage_plugin=StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3)
    writer.open()
    try:
        conn = writer.add_connection(ACTION_TOPIC, ACTION_TYPE, typestore=store)
        for stamp_ns, data in serialized:
            writer.write(conn, stamp_ns, data)
    finally:
        writer.close()


def read_action_bag(path: str | Path) -> list:
    """The Actions of a bag written by vidaction-eval, deserialised by rosbags (attribute access like rclpy)."""
    from rosbags.rosbag2 import Reader
    store = action_typestore()
    with Reader(path) as reader:
        conns = [c for c in reader.connections if c.msgtype == ACTION_TYPE]
        return [store.deserialize_cdr(raw, ACTION_TYPE) for _, _, raw in reader.messages(connections=conns)]


# -- recording -------------------------------------------------------------------------------------------------
def _stamp_s(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def _stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@dataclass
class ContextRecord:
    """What the policy node builds its Observation from (mirrors PolicyNode._observation)."""
    stamp_s: float
    sequence: int
    model: str
    vector: np.ndarray
    regions: dict
    similarity: float | None
    lookback_s: float


class Recorder:
    """A node on its own executor thread recording every Action (and MemoryContext) in arrival order."""

    def __init__(self, context, contexts: bool = True):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from .. import qos
        from ..msg import Action, MemoryContext
        self.actions: list = []
        self.decided: set[int] = set()        # frame sequences with a decision (failsafes left out)
        self.contexts: dict[int, ContextRecord] = {}
        self.cond = threading.Condition()
        self._recording = True
        self.node = Node('vidaction_eval', context=context)
        self.action_sub = self.node.create_subscription(Action, 'action', self._on_action, qos.ACTION)
        self.context_sub = None
        if contexts:
            self.context_sub = self.node.create_subscription(MemoryContext, 'memory/context', self._on_context,
                                                             qos.EMBEDDING)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, name='vidaction-eval-spin', daemon=True)
        self.thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def _on_action(self, msg) -> None:
        with self.cond:
            if self._recording:
                self.actions.append(msg)
                if msg.trigger != WATCHDOG:
                    self.decided.add(int(msg.frame_sequence))
                self.cond.notify_all()

    def _on_context(self, ctx) -> None:
        emb = ctx.embedding
        rec = ContextRecord(
            stamp_s=_stamp_s(ctx), sequence=int(emb.sequence), model=emb.model,
            vector=np.asarray(emb.vector, dtype=np.float32),
            regions={r.name: np.asarray(r.vector, dtype=np.float32) for r in emb.regions},
            similarity=float(ctx.similarity_to_past) if ctx.has_past else None, lookback_s=float(ctx.lookback_s))
        with self.cond:
            if self._recording:
                self.contexts.setdefault(rec.sequence, rec)

    def stop_recording(self) -> list:
        """Freeze the record (a pipeline shutting down publishes a failsafe that is not part of the replay)."""
        with self.cond:
            self._recording = False
            return list(self.actions)

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(10.0)
        self.node.destroy_node()


# -- the run ---------------------------------------------------------------------------------------------------
@dataclass
class RunOptions:
    mode: str = 'composed'
    policy_file: str = ''
    params_file: str = ''
    sets: Sequence[str] = ()
    bag_topic: str | None = None
    settle_s: float = 2.0          # camera.lockstep_settle_s: DDS matching time before the first frame
    startup_timeout_s: float = 600.0
    stall_timeout_s: float = 120.0
    rescore: bool = True
    progress: bool = True


def pipeline_argv(bag: str, opts: RunOptions) -> list[str]:
    argv = ['--mode', opts.mode, '--lockstep', '--source', str(bag),
            # The camera waits for 2 subscribers to `action` (itself and our recorder) and a settle time, so
            # the recorder hears the first frame; it shuts the pipeline down at the end of the bag.
            '--set', 'camera.lockstep_action_subscribers=2',
            '--set', f'camera.lockstep_settle_s={opts.settle_s}',
            '--set', 'camera.shutdown_at_end=true']
    if opts.bag_topic:
        argv += ['--set', f'camera.bag_topic={opts.bag_topic}']
    if opts.policy_file:
        argv += ['--policy_file', str(Path(opts.policy_file).resolve())]
    if opts.params_file:
        argv += ['--params-file', str(Path(opts.params_file).resolve())]
    for item in opts.sets:          # last: the user's --set wins over ours
        argv += ['--set', item]
    return argv


def policy_params(argv: list[str]) -> dict:
    """The policy node's effective parameters for this pipeline command line (params file + overrides)."""
    import yaml
    from ..nodes import pipeline
    args = pipeline.build_parser().parse_args(argv)
    with open(pipeline.params_file(args), encoding='utf-8') as f:
        data = yaml.safe_load(f) or {}
    params = dict((data.get('policy') or {}).get('ros__parameters') or {})
    params.update(pipeline.collect_overrides(args, composed=args.mode == 'composed')['policy'])
    return params


def _stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    return proc.returncode


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors='replace')[-n:]
    except OSError:
        return ''


@dataclass
class RunRecord:
    actions: list                  # every Action received, arrival order
    contexts: dict                 # sequence -> ContextRecord
    frames_expected: int
    wall_s: float
    pipeline_exit: int | None
    log: Path


def run_replay(bag: str, out_dir: Path, opts: RunOptions) -> RunRecord:
    """Run the lock-step pipeline over `bag` and record its Actions (and memory contexts)."""
    import rclpy
    from ..ingest.bags import IMAGE_TYPES, BagError, bag_info, normalise_topic
    from .progress import Progress

    try:
        info = bag_info(bag)
    except BagError as err:
        raise EvalError(str(err)) from err
    images = [t for t in info.topics if t.msgtype in IMAGE_TYPES]
    if opts.bag_topic:
        images = [t for t in images if t.name == normalise_topic(opts.bag_topic)]
    if len(images) != 1:
        names = ', '.join(f'{t.name} ({t.msgtype})' for t in info.topics) or 'none'
        raise EvalError(f'{bag}: need exactly one image topic (choose with --bag-topic); topics: {names}')
    expected = images[0].count

    ensure_local_dds()
    log = out_dir / 'pipeline.log'
    context = rclpy.Context()
    rclpy.init(context=context)
    recorder = Recorder(context, contexts=opts.rescore)
    bar = Progress(expected, desc='replay', enabled=opts.progress)
    started = time.monotonic()
    proc = None
    try:
        with open(log, 'w') as out:
            # cwd outside any source checkout: the children import the installed package.
            proc = subprocess.Popen([sys.executable, '-m', 'vidaction_ros.nodes.pipeline', *pipeline_argv(bag, opts)],
                                    cwd=tempfile.gettempdir(), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=dict(os.environ))
        last_progress, exited_at = time.monotonic(), None
        done = 0
        while True:
            with recorder.cond:
                recorder.cond.wait(0.5)
                n, last_decided = len(recorder.decided), expected - 1 in recorder.decided
            if n > done:
                done, last_progress = n, time.monotonic()
                bar.update(done)
            if last_decided or done >= expected:
                break
            now = time.monotonic()
            if proc.poll() is not None:
                # The camera shuts the pipeline down at the end of the bag; in-flight Actions may still be on
                # their way, and frames the camera could not decode never get one.
                exited_at = exited_at or now
                if now - exited_at > 3.0:
                    break
            limit = opts.startup_timeout_s if done == 0 else opts.stall_timeout_s
            if now - last_progress > limit:
                raise EvalError(f'no Action for {limit:.0f} s after {done}/{expected} frames; pipeline log '
                                f'{log}:\n{_tail(log)}')
        actions = recorder.stop_recording()
        with recorder.cond:
            contexts = dict(recorder.contexts)
    finally:
        bar.close()
        code = _stop_group(proc) if proc is not None else None
        recorder.close()
        rclpy.try_shutdown(context=context)
    if not any(a.trigger != WATCHDOG for a in actions):
        raise EvalError(f'the pipeline decided no frame (exit code {code}); pipeline log {log}:\n{_tail(log)}')
    return RunRecord(actions, contexts, expected, time.monotonic() - started, code, log)


# -- re-scoring --------------------------------------------------------------------------------------------------
def rescore(contexts: dict, spec, params: dict, logger=None) -> dict:
    """Every rule's score on every frame, from the recorded memory contexts, by a PolicyEngine over the same
    policy and text model as the policy node. Returns {sequence: Decision}."""
    import logging
    from ..perception.backends import create_backend
    from ..nodes.embedder_node import backend_params
    from ..policy import Observation, PolicyEngine
    log = logger or logging.getLogger('vidaction_eval')
    backend = create_backend(params.get('backend', 'cpu'), load_images=False, **backend_params(params, log))
    backend.activate()
    try:
        engine = PolicyEngine(spec, backend.embed_texts, logger=log)
        out = {}
        for seq in sorted(contexts):
            c = contexts[seq]
            if c.model != backend.model_id:
                raise EvalError(f'frame {seq} was embedded by {c.model!r} but the policy\'s text model is '
                                f'{backend.model_id!r}')
            obs = Observation(stamp_s=c.stamp_s, sequence=seq, vector=c.vector, regions=c.regions,
                              similarity_to_past=c.similarity, lookback_s=c.lookback_s)
            out[seq] = engine.decide(obs)
        return out
    finally:
        backend.deactivate()


# -- report --------------------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    report: dict
    files: dict
    actions: list = field(default_factory=list)


def per_frame(actions: list) -> tuple[list, dict]:
    """The first decision per frame in frame order, and stream checks (duplicates, order, failsafes)."""
    decisions = [a for a in actions if a.trigger != WATCHDOG]
    first: dict[int, object] = {}
    for a in decisions:
        first.setdefault(int(a.frame_sequence), a)
    seqs = [int(a.frame_sequence) for a in decisions]
    checks = {
        'actions_received': len(actions),
        'failsafes': len(actions) - len(decisions),
        'frames_decided': len(first),
        'duplicates': len(decisions) - len(first),
        'in_order': all(b > a for a, b in zip(seqs, seqs[1:])),
    }
    return [first[k] for k in sorted(first)], checks


def choose_actions(spec, labels: Labels | None, names: Sequence[str] | None) -> list[str]:
    from .calibrate import choose_rules
    return choose_rules(spec, labels, names) if (names or labels is not None) else \
        [max(spec.rules, key=lambda r: r.priority).name]


def build_report(record: RunRecord, spec, bag: str, labels: Labels | None, evaluated: list[str],
                 tol: Tolerances, decisions_rescored: dict | None, opts: RunOptions) -> dict:
    from ..ingest.bags import bag_info
    frames, checks = per_frame(record.actions)
    times = [_stamp_s(a) for a in frames]
    seqs = [int(a.frame_sequence) for a in frames]
    checks['frames_in_bag'] = record.frames_expected
    checks['missing'] = sorted(set(range(record.frames_expected)) - set(seqs))
    checks['complete'] = not checks['missing'] and checks['duplicates'] == 0
    counts: dict[str, int] = {}
    for a in frames:
        counts[a.action] = counts.get(a.action, 0) + 1
    rows = [{f: float(getattr(a, f)) for f in LATENCY_FIELDS} for a in frames]
    info = bag_info(bag)
    report = {
        'bag': str(bag), 'bag_start_s': info.start_ns / 1e9, 'bag_end_s': info.end_ns / 1e9,
        'policy': spec.source, 'labels': labels.source if labels is not None else None,
        'mode': opts.mode, 'sets': list(opts.sets), 'wall_s': round(record.wall_s, 2),
        'pipeline_exit_code': record.pipeline_exit,
        'stream': checks,
        'first_stamp_s': times[0] if times else None, 'last_stamp_s': times[-1] if times else None,
        'decisions': counts,
        'latency_ms': latency_table(rows),
        'evaluated_actions': evaluated,
        'events': {}, 'frames': {},
        'rules': {r.name: {'enter': getattr(r, 'enter', getattr(r, 'below_similarity', None)),
                           'exit': getattr(r, 'exit', getattr(r, 'exit_similarity', None)),
                           'priority': r.priority} for r in spec.rules},
    }
    for name in evaluated:
        active = [a.action == name for a in frames]
        onsets = [t for t, on, prev in zip(times, active, [False] + active[:-1]) if on and not prev]
        entry = {'onsets_s': onsets, 'frames_active': int(sum(active))}
        if labels is not None:
            entry = event_metrics(times, active, labels.spans, labels.ambiguous, tol, action=name).as_dict()
            report['frames'][name] = frame_metrics(times, active, labels.spans, labels.ambiguous)
        report['events'][name] = entry
    if decisions_rescored is not None:
        agree = sum(1 for a in frames if int(a.frame_sequence) in decisions_rescored
                    and decisions_rescored[int(a.frame_sequence)].action == a.action)
        report['rescored'] = {'frames': len(decisions_rescored), 'agree_with_actions': agree}
    return report


def _fmt(x, nd=3, unit='') -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return 'n/a'
    return f'{x:.{nd}f}{unit}' if isinstance(x, float) else f'{x}{unit}'


def report_markdown(report: dict, files: dict) -> str:
    s = report['stream']
    lines = [f'# Replay evaluation: `{Path(report["bag"]).name}`', '',
             f'- bag: `{report["bag"]}` ({report["bag_start_s"]:.1f}–{report["bag_end_s"]:.1f} s, '
             f'{s["frames_in_bag"]} frames)',
             f'- policy: `{report["policy"]}`; labels: '
             + (f'`{report["labels"]}`' if report['labels'] else 'none'),
             f'- pipeline: `{report["mode"]}`, lock-step (every frame, header stamps); wall time '
             f'{report["wall_s"]:.1f} s' + (f'; `--set {" ".join(report["sets"])}`' if report['sets'] else ''),
             f'- stream: {s["frames_decided"]}/{s["frames_in_bag"]} frames decided, {s["duplicates"]} duplicate(s), '
             f'{"in order" if s["in_order"] else "OUT OF ORDER"}, {s["failsafes"]} failsafe(s), '
             f'missing {s["missing"] or "none"}',
             '- decisions per action: ' + ', '.join(f'{k} {v}' for k, v in sorted(report['decisions'].items())),
             '']
    if 'rescored' in report:
        r = report['rescored']
        lines += [f'- re-scored from the memory contexts: {r["frames"]} frames, decision agrees with the Action on '
                  f'{r["agree_with_actions"]}', '']
    lines += ['## Latency per stage (ms, from the Action fields)', '', '| stage | n | p50 | p90 | p99 | max |',
              '|---|---|---|---|---|---|']
    for key, st in report['latency_ms'].items():
        lines.append(f'| {STAGE_NAMES.get(key, key)} (`{key}`) | {st["n"]} | {_fmt(st["p50"], 1)} | '
                     f'{_fmt(st["p90"], 1)} | {_fmt(st["p99"], 1)} | {_fmt(st["max"], 1)} |')
    lines.append('')
    for name, ev in report['events'].items():
        lines += [f'## {name}', '']
        if 'precision' not in ev:
            lines += [f'- fired at {", ".join(f"{t:.1f} s" for t in ev["onsets_s"]) or "never"}; active on '
                      f'{ev["frames_active"]} frames (no labels: no precision/recall)', '']
            continue
        tol = ev['tolerances']
        lead = ev['lead_time_s']
        lines += [f'- event precision {_fmt(ev["precision"])}, recall {_fmt(ev["recall"])}, F1 {_fmt(ev["f1"])} '
                  f'(tp {ev["tp"]}, fn {ev["fn"]}, fp {ev["fp"]}; refires {ev["refires"]})',
                  f'- lead time (labelled start − first firing; negative = late): '
                  + (f'mean {lead["mean"]:+.2f} s, min {lead["min"]:+.2f} s, max {lead["max"]:+.2f} s'
                     if lead else 'n/a'),
                  f'- false alarms at: {", ".join(f"{t:.1f} s" for t in ev["false_alarms"]) or "none"}',
                  f'- rules: detected if active within [start − {tol["before_s"]:g} s, '
                  + (f'min(end, start + {tol["max_delay_s"]:g} s)]' if tol['max_delay_s'] is not None else 'end]')
                  + f'; a firing outside every span [start − {tol["before_s"]:g} s, end + {tol["after_s"]:g} s] '
                  f'(ambiguous spans too) is a false alarm', '',
                  '| span | evaluated | detected | first firing | lead | note |', '|---|---|---|---|---|---|']
        for sp in ev['spans']:
            lines.append(f'| {sp["start"]:.1f}–{sp["end"]:.1f} s | {"yes" if sp["evaluated"] else "no"}'
                         f'{" (truncated)" if sp["truncated"] else ""} | {"yes" if sp["detected"] else "no"} | '
                         f'{_fmt(sp["first_fire_s"], 1, " s")} | {_fmt(sp["lead_s"], 2, " s")} | {sp["note"][:60]} |')
        fm = report['frames'].get(name)
        if fm:
            lines += ['', f'Frames (ambiguous ignored): tp {fm["tp"]}, fp {fm["fp"]}, fn {fm["fn"]}, tn {fm["tn"]}; '
                      f'precision {_fmt(fm["precision"])}, recall {_fmt(fm["recall"])}.']
        lines.append('')
    lines += ['## Files', ''] + [f'- {k}: `{v}`' for k, v in files.items()] + ['']
    if 'timeline' in files:
        lines += [f'![timeline]({Path(files["timeline"]).name})', '']
    return '\n'.join(lines)


def plot_timeline(path: Path, frames: list, spec, evaluated: list[str], labels: Labels | None,
                  rescored: dict | None, report: dict) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from ..policy import PromptRule

    t = np.array([_stamp_s(a) for a in frames])
    rules = list(spec.rules)
    fig, axes = plt.subplots(len(rules) + 1, 1, figsize=(14, 2.8 * len(rules) + 2.0), sharex=True, squeeze=False,
                             gridspec_kw={'height_ratios': [3] * len(rules) + [1.2]})
    axes = axes[:, 0]
    for ax, rule in zip(axes, rules):
        if labels is not None:
            for i, s in enumerate(labels.spans):
                ax.axvspan(s.start, s.end, color='tab:green', alpha=0.12, label='labelled span' if i == 0 else None)
            for i, s in enumerate(labels.ambiguous):
                ax.axvspan(s.start, s.end, color='0.6', alpha=0.25, hatch='//', label='ambiguous' if i == 0 else None)
        if rescored:
            score = np.array([rescored[int(a.frame_sequence)].scores[rule.name]
                              if int(a.frame_sequence) in rescored else np.nan for a in frames], dtype=float)
            ax.plot(t, score, color='black', lw=1.3, label=f'{rule.name} score (every frame)')
        mine = np.array([a.action == rule.name for a in frames])
        if mine.any():
            ax.plot(t[mine], [a.score for a, m in zip(frames, mine) if m], 'o', ms=3.5, color='tab:red',
                    label=f'{rule.name} decided (Action.score)')
        prompt = isinstance(rule, PromptRule)
        enter = rule.enter if prompt else rule.below_similarity
        exit_ = rule.exit if prompt else rule.exit_similarity
        ax.axhline(enter, color='tab:red', lw=1.0, ls='--', label=f'enter {enter:g}')
        if exit_ != enter:
            ax.axhline(exit_, color='tab:red', lw=1.0, ls=':', label=f'exit {exit_:g}')
        ev = report['events'].get(rule.name) or {}
        for i, fa in enumerate(ev.get('false_alarms') or []):
            ax.axvline(fa, color='tab:orange', lw=1.5, label='false alarm' if i == 0 else None)
        ax.set_ylabel(f'{rule.score} score' if prompt else f'similarity {rule.lookback_s:g} s ago', fontsize=8)
        title = rule.name + (f' (region {rule.region})' if prompt and rule.region else '')
        if 'precision' in ev:
            title += f' — precision {_fmt(ev["precision"], 2)}, recall {_fmt(ev["recall"], 2)}'
            if ev['lead_time_s']:
                title += f', lead {ev["lead_time_s"]["mean"]:+.2f} s'
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    # Bottom strip: the action decided on each frame.
    strip = axes[-1]
    names = list(dict.fromkeys([spec.default_action.name] + [r.name for r in rules]
                               + sorted({a.action for a in frames})))
    colours = plt.get_cmap('tab10')
    for i, name in enumerate(names):
        sel = np.array([a.action == name for a in frames])
        if sel.any():
            strip.plot(t[sel], np.full(sel.sum(), i), '|', ms=12, mew=2, color=colours(i % 10), label=name)
    for name in evaluated:
        for onset in (report['events'].get(name) or {}).get('onsets') or \
                (report['events'].get(name) or {}).get('onsets_s') or []:
            strip.axvline(onset, color='tab:red', lw=0.8, ls='--')
    strip.set_yticks(range(len(names)), names, fontsize=8)
    strip.set_ylim(-0.7, len(names) - 0.3)
    strip.set_title('decided action per frame (dashed: onsets of the evaluated action)', fontsize=9)
    strip.set_xlabel('header stamp (media time) [s]')
    strip.grid(alpha=0.3, axis='x')
    if len(t):
        pad = max(0.5, 0.01 * (t[-1] - t[0]))
        strip.set_xlim(t[0] - pad, t[-1] + pad)
    fig.suptitle(f'{Path(report["bag"]).name}: replay through the pipeline ({report["mode"]}, lock-step)',
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(bag: str, out_dir: str | Path, labels: Labels | None = None, actions: Sequence[str] | None = None,
             tol: Tolerances = Tolerances(), opts: RunOptions = RunOptions(), storage: str = 'mcap',
             force: bool = False) -> EvalResult:
    """Replay `bag`, write the Action bag, timeline.png, report.json and report.md into `out_dir`."""
    from rclpy.serialization import serialize_message
    from ..paths import resolve_policy_file
    from ..policy import load_policy

    out = Path(out_dir)
    bag_out = out / 'actions'
    if bag_out.exists():
        if not force:
            raise EvalError(f'{bag_out} exists already (rosbag2 bags are never overwritten); use --force or '
                            f'another --out')
        shutil.rmtree(bag_out)
    out.mkdir(parents=True, exist_ok=True)
    argv = pipeline_argv(bag, opts)
    params = policy_params(argv)
    spec = load_policy(resolve_policy_file(params.get('policy_file', '')))
    evaluated = choose_actions(spec, labels, actions)

    record = run_replay(bag, out, opts)
    # The recording first: whatever the report makes of it, the Action stream is kept.
    write_action_bag(bag_out, [(_stamp_ns(a), bytes(serialize_message(a))) for a in record.actions], storage)
    files = {'actions_bag': str(bag_out), 'report_json': str(out / 'report.json'),
             'report_md': str(out / 'report.md'), 'timeline': str(out / 'timeline.png'),
             'pipeline_log': str(record.log)}
    rescored = rescore(record.contexts, spec, params) if opts.rescore else None
    report = build_report(record, spec, bag, labels, evaluated, tol, rescored, opts)
    report['actions_bag_count'] = len(record.actions)
    frames, _ = per_frame(record.actions)
    plot_timeline(Path(files['timeline']), frames, spec, evaluated, labels, rescored, report)
    report['files'] = files
    Path(files['report_json']).write_text(json.dumps(_clean(report), indent=1) + '\n', encoding='utf-8')
    Path(files['report_md']).write_text(report_markdown(report, files), encoding='utf-8')
    return EvalResult(report, files, record.actions)


def _clean(value):
    """JSON has no NaN: not-measured values become null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


# -- command line ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='vidaction-eval', description='Replay a rosbag2 bag through the pipeline '
                                '(lock-step: every frame, header stamps) and report what fired, when, and how fast.')
    p.add_argument('bag', help='rosbag2 bag (directory, .mcap or .db3) with one image topic (or --bag-topic)')
    p.add_argument('--labels', help='labels YAML (spans in media time; test/data/vtest_near_zone_labels.yaml format)')
    p.add_argument('--out', help='output directory (default ./eval_<bag name>)')
    p.add_argument('--policy-file', default='', help='policy YAML (default: the package\'s config/policy.yaml)')
    p.add_argument('--params-file', default='', help='ros2 params file (default: config/vidaction.yaml)')
    p.add_argument('--set', action='append', default=[], metavar='NODE.PARAM=VALUE',
                   help='override a node parameter, as vidaction_pipeline --set (repeatable)')
    p.add_argument('--mode', choices=('composed', 'processes'), default='composed',
                   help='one composed process, frames by reference (default: the lightest on a small machine), '
                   'or four node processes as vidaction.launch.py runs them')
    p.add_argument('--bag-topic', help='image topic of a bag with several')
    p.add_argument('--action', action='append', default=[], help='action to evaluate against the labels '
                   '(repeatable; default: the labels\' action:, else the highest-priority rule)')
    p.add_argument('--before-s', type=float, default=1.0, help='a firing this early before a labelled start '
                   'still counts as a detection (default 1.0)')
    p.add_argument('--after-s', type=float, default=2.0, help='still active this long after a span ends is not '
                   'a false alarm (default 2.0: covers min_hold_s)')
    p.add_argument('--max-delay-s', type=float, help='a first firing later than start + this is a miss '
                   '(default: anywhere before the span ends)')
    p.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='output bag storage')
    p.add_argument('--settle-s', type=float, default=2.0, help='DDS settle time before the first frame (default 2)')
    p.add_argument('--timeout-s', type=float, default=120.0, help='give up when no Action arrives for this long '
                   'after the first (default 120; the first may take up to 600 s: model load)')
    p.add_argument('--no-rescore', action='store_true', help='do not re-score every rule on every frame '
                   '(the timeline then shows only the deciding rule\'s score)')
    p.add_argument('--force', action='store_true', help='replace OUT/actions if it exists')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..ingest.bags import is_bag_path
    from .eval_metrics import LabelsError
    from ..policy import PolicyError
    if not is_bag_path(args.bag):
        sys.stderr.write(f'vidaction-eval: {args.bag} is not a rosbag2 bag (a directory with metadata.yaml, '
                         f'or a .mcap / .db3 file)\n')
        return 2
    out = args.out or f'eval_{Path(args.bag.rstrip("/")).stem}'
    try:
        labels = load_labels(args.labels) if args.labels else None
        tol = Tolerances(args.before_s, args.after_s, args.max_delay_s)
        opts = RunOptions(mode=args.mode, policy_file=args.policy_file, params_file=args.params_file,
                          sets=args.set, bag_topic=args.bag_topic, settle_s=args.settle_s,
                          stall_timeout_s=args.timeout_s, rescore=not args.no_rescore, progress=not args.quiet)
        result = evaluate(args.bag, out, labels, args.action, tol, opts, args.storage, args.force)
    except (EvalError, LabelsError, PolicyError, ValueError) as err:
        sys.stderr.write(f'vidaction-eval: {err}\n')
        return 1
    except KeyboardInterrupt:
        return 130
    sys.stdout.write(report_markdown(result.report, result.files))
    return 0 if result.report['stream']['complete'] else 1


if __name__ == '__main__':
    raise SystemExit(main())
