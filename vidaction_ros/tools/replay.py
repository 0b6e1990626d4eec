"""Running the real pipeline over a bag for vidaction-eval: `python -m vidaction_ros.nodes.pipeline` in lock-step
in a child process, an rclpy recorder of every Action and MemoryContext it publishes, and the re-scoring of every
rule on every recorded frame from those contexts.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .action_bags import EvalError

WATCHDOG = 'watchdog'          # Action.TRIGGER_WATCHDOG: failsafes are not per-frame decisions


def ensure_local_dds(env=os.environ) -> None:
    """Keep discovery on loopback with a domain of our own, unless the user chose otherwise."""
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')


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
        self.action_sub = self.node.create_subscription(Action, 'action', self._on_action, qos.action_reader(True))
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
                self.cond.notify_all()

    def wait_for_contexts(self, timeout_s: float) -> bool:
        """Until every decided frame's MemoryContext is in (or timeout_s): they travel on another topic, so
        the last frame's Action may well come first (composed mode decides before the context's DDS copy)."""
        if self.context_sub is None:
            return True
        with self.cond:
            return self.cond.wait_for(lambda: self.decided <= self.contexts.keys(), timeout_s)

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
CONTEXT_WAIT_S = 5.0      # after the last Action, for memory contexts still on their way (rescoring)

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
    argv = ['--mode', opts.mode, '--lockstep', '--source', str(Path(bag).resolve()),
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


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGINT to a child started with start_new_session=True and its group; SIGKILL after timeout s. The exit code."""
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
        recorder.wait_for_contexts(CONTEXT_WAIT_S)
        actions = recorder.stop_recording()
        with recorder.cond:
            contexts = dict(recorder.contexts)
    finally:
        bar.close()
        code = stop_group(proc) if proc is not None else None
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
