"""The escalation node next to the real pipeline: camera, embedder, memory and policy as four processes in
lock-step on the committed replay bag (46.0-61.8 s of vtest.avi, 80 frames; the pair walks into the near
zone at 50.4 s, so STOP fires on this slice), plus

* the escalation node as its own process with the real second-opinion analyser (`escalation`), and
* a second escalation node in this process with a deliberately slow analyser that escalates every scored
  Action (`escalation_slow`), to show that Actions keep coming while the analyser is busy and that the
  waiting escalations it cannot take are replaced and counted, never queued up behind it.

Subscribers in this process record every Action and Escalation with its arrival time.
"""
import os
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from bag_helpers import REPLAY_BAG
from ros_helpers import stop

pytestmark = pytest.mark.integration

FRAMES = 80                 # the replay bag
SLOW_S = 1.5                # the slow analyser's thinking time
TIMEOUT_S = 300.0


class Recorder:
    """Records (arrival monotonic time, message) per topic on its own executor thread."""

    def __init__(self, context, topics):
        self.items = {topic: [] for topic in topics}
        self.cond = threading.Condition()
        self.node = Node('test_escalation_recorder', context=context)
        for topic, (cls, qos) in topics.items():
            self.node.create_subscription(cls, topic, lambda m, t=topic: self._add(t, m), qos)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _add(self, topic, msg):
        with self.cond:
            self.items[topic].append((time.monotonic(), msg))
            self.cond.notify_all()

    def messages(self, topic):
        with self.cond:
            return [m for _, m in self.items[topic]]

    def timed(self, topic):
        with self.cond:
            return list(self.items[topic])

    def wait_for(self, predicate, timeout):
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


class SlowAnalyser:
    """Takes SLOW_S per frame (or until released) and records when it was busy."""
    name = 'slow_test_analyser'

    def __init__(self):
        self.busy = []                      # (start, end) monotonic
        self.release = threading.Event()

    def analyse(self, frame, question, context):
        from vidaction_ros.escalation import VERDICT_UNSURE, Answer
        start = time.monotonic()
        self.release.wait(SLOW_S)
        self.busy.append((start, time.monotonic()))
        return Answer(VERDICT_UNSURE, 0.0, f'thought about frame {context["frame_sequence"]}')


def start_node(module, name, overrides, log_path, extra=()):
    from vidaction_ros.nodes.pipeline import ros_param_arg
    cmd = [sys.executable, '-m', module, '--ros-args', '-r', f'__node:={name}', *extra]
    for key, value in overrides.items():
        cmd += ['-p', ros_param_arg(key, value)]
    # Outside the source tree: a child must import the installed package (it has the generated messages).
    return subprocess.Popen(cmd, cwd=tempfile.gettempdir(), stdout=open(log_path, 'w'), stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(os.environ))




def stamp_ns(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    from vidaction_ros import graph
    from vidaction_ros import qos
    from vidaction_ros.msg import Action, Escalation
    from vidaction_ros.nodes.escalation_node import EscalationNode
    from vidaction_ros.nodes.pipeline import LOCKSTEP_OVERRIDES, node_command
    from vidaction_ros.paths import config_file

    logs = tmp_path_factory.mktemp('escalation')
    context = rclpy.Context()
    rclpy.init(context=context)
    recorder = Recorder(context, {'action': (Action, qos.ACTION_REPLAY), 'escalation': (Escalation, qos.ACTION),
                                  'escalation_slow': (Escalation, qos.ACTION)})
    slow = SlowAnalyser()
    # Every scored Action is in the band [-2, 2] and no interval: the slow node is asked far more often than
    # it can answer.
    slow_node = EscalationNode('escalation_slow', analyser=slow, context=context,
                               cli_args=['--ros-args', '-r', 'escalation:=escalation_slow'],
                               parameter_overrides=[Parameter('low', value=-2.0), Parameter('high', value=2.0),
                                                    Parameter('min_interval_s', value=0.0),
                                                    Parameter('log_answers', value=False)])
    slow_executor = SingleThreadedExecutor(context=context)
    slow_executor.add_node(slow_node)
    threading.Thread(target=slow_executor.spin, daemon=True).start()

    procs = {'escalation': start_node('vidaction_ros.nodes.escalation_node', 'escalation', {},
                                      logs / 'escalation.log')}
    # The four pipeline nodes as `vidaction_pipeline --mode processes --lockstep` starts them, each bringing
    # itself up. `action` has four subscribers to wait for: the camera, this recorder and the two
    # escalation nodes, so every one of them hears the first frame's Action.
    overrides = {name: dict(values) for name, values in LOCKSTEP_OVERRIDES.items()}
    overrides['camera'].update(source=str(REPLAY_BAG), lockstep_action_subscribers=4)
    params = str(config_file(graph.PARAMS_FILE))
    for spec in graph.NODES:
        cmd = node_command(spec, params, overrides.get(spec.name, {}))
        procs[spec.name] = subprocess.Popen(cmd, cwd=tempfile.gettempdir(), stdout=open(logs / f'{spec.name}.log', 'w'),
                                            stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))

    def finished():
        actions = recorder.items['action']
        first_stop = next((m for _, m in actions if m.action == 'STOP' and m.changed), None)
        return (any(m.frame_sequence == FRAMES - 1 for _, m in actions) and first_stop is not None
                and any(e.frame_sequence == first_stop.frame_sequence for _, e in recorder.items['escalation']))

    try:
        done = recorder.wait_for(finished, TIMEOUT_S)
        # The slow node finishes the analysis it has (and the one waiting), then we look at its books.
        assert slow_node.escalator.worker.wait_idle(4 * SLOW_S + 30)
        recorder.wait_for(lambda: len(recorder.items['escalation_slow']) >= slow_node.escalator.counts['published'],
                          30)
        counts = dict(slow_node.escalator.counts)
        codes = {name: stop(proc, timeout=30.0) for name, proc in procs.items()}
    finally:
        slow.release.set()
        for proc in procs.values():
            stop(proc)
        slow_executor.shutdown()
        slow_node.close()
        slow_node.destroy_node()
        recorder.close()
        rclpy.try_shutdown(context=context)
    texts = {name: (logs / f'{name}.log').read_text() for name in procs}
    assert done, ('the run did not finish: escalation log tail:\n' + texts['escalation'][-3000:]
                  + '\npolicy log tail:\n' + texts['policy'][-2000:])
    return {'actions': recorder.timed('action'), 'escalations': recorder.messages('escalation'),
            'slow': recorder.timed('escalation_slow'), 'slow_busy': list(slow.busy), 'slow_counts': counts,
            'codes': codes, 'logs': texts}


def test_every_frame_is_decided_with_escalation_nodes_listening(run):
    sequences = sorted({m.frame_sequence for _, m in run['actions']})
    assert sequences == list(range(FRAMES))


def test_the_first_stop_is_escalated_with_its_frame_and_stamp_and_the_second_opinion_agrees(run):
    from vidaction_ros.msg import Escalation
    actions = [m for _, m in run['actions']]
    first_stop = next(m for m in actions if m.action == 'STOP' and m.changed)
    # The pair is in the near zone from 50.4 s (hand labels); the detector needs their whole bodies.
    assert 50.4 <= stamp_ns(first_stop) / 1e9 <= 50.4 + 3.0
    matches = [e for e in run['escalations'] if e.frame_sequence == first_stop.frame_sequence]
    assert len(matches) == 1, [e.frame_sequence for e in run['escalations']]
    e = matches[0]
    assert stamp_ns(e) == stamp_ns(first_stop) and e.header.frame_id == first_stop.header.frame_id
    assert e.trigger == Escalation.TRIGGER_CHANGE
    assert (e.action, e.action_code, e.region) == ('STOP', first_stop.action_code, 'near_zone')
    assert e.matched_prompt == first_stop.matched_prompt and e.score == pytest.approx(first_stop.score)
    assert e.question == f'Does this image show {first_stop.matched_prompt} in the near zone? Answer yes or no.'
    assert e.analyser.startswith('second_opinion')
    # The frame shows people on the grass (labelled span), and the second opinion says so.
    assert e.verdict == Escalation.VERDICT_AGREE, e.answer
    assert 0.5 <= e.confidence <= 1.0 and e.answer.startswith('near zone: ') and e.answer.endswith('yes.')
    assert e.queue_ms >= 0 and e.analysis_ms > 0
    assert e.latency_ms == pytest.approx(e.queue_ms + e.analysis_ms, abs=0.01)
    assert e.dropped_before == 0


def test_every_escalation_names_a_real_action_that_deserved_one(run):
    by_sequence = {}
    for _, action in run['actions']:
        by_sequence.setdefault(action.frame_sequence, action)
    assert run['escalations']
    for e in run['escalations']:
        action = by_sequence[e.frame_sequence]
        assert stamp_ns(e) == stamp_ns(action) and e.action == action.action
        if e.trigger == 'change':
            assert action.changed and action.action == 'STOP'
        else:
            assert e.trigger == 'unsure' and 0.2 <= action.score <= 0.4
    stamps = [stamp_ns(e) for e in run['escalations'] if e.trigger == 'unsure']
    assert all(b - a >= 1_000_000_000 for a, b in zip(stamps, stamps[1:]))      # min_interval_s


def test_actions_keep_coming_while_the_analyser_is_busy(run):
    busy = run['slow_busy']
    assert len(busy) >= 2, 'the slow analyser was hardly asked'
    arrivals = [t for t, _ in run['actions']]
    # While the (in-process) analyser thinks, the policy goes on deciding frame after frame at its own pace.
    during = [sum(start < t < end for t in arrivals) for start, end in busy]
    assert max(during) >= 5, f'Actions per busy analysis: {during}'
    # Every analysis that ended before the stream did saw Actions arrive while it ran (timing is not asserted:
    # that the stream went on at all while the analyser was stuck is the point).
    # The stream is the per-frame decisions: the watchdog's FAILSAFE after the video ends is not part of it.
    stream_end = max(t for t, a in run['actions'] if a.trigger != 'watchdog')
    inside_stream = [n for n, (_, end) in zip(during, busy) if end < stream_end]
    assert inside_stream and min(inside_stream) >= 2, f'Actions per busy analysis: {during}'


def test_escalations_the_busy_analyser_cannot_take_are_replaced_and_counted(run):
    counts = run['slow_counts']
    published = [m for _, m in run['slow']]
    assert counts['escalated'] > counts['published'] == len(published)
    # Every escalation is either answered or counted as dropped in the next answer: nothing queues up.
    assert counts['escalated'] == counts['published'] + counts['dropped']
    assert sum(m.dropped_before for m in published) == counts['dropped'] > 0
    # Latest wins: each answer is about a frame newer than the one before, and its queue wait is at most one
    # analysis (it waited only for the analysis in progress).
    sequences = [m.frame_sequence for m in published]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert all(m.queue_ms < SLOW_S * 1000 + 1000 for m in published)
    assert all(m.analyser == 'slow_test_analyser' and m.verdict == m.VERDICT_UNSURE for m in published)


def test_the_escalation_process_shuts_down_cleanly(run):
    assert run['codes']['escalation'] == 0, run['logs']['escalation'][-3000:]
    log = run['logs']['escalation']
    assert 'Traceback' not in log, log[-3000:]
    assert 'escalation up: analyser second_opinion' in log and '-> agree' in log


@pytest.mark.parametrize('args, reason', [
    (['analyser:=vlm'], 'needs model_path'),
    (['analyser:=vlm', 'model_path:=/nonexistent/vlm_model'], "'/nonexistent/vlm_model' is not a directory"),
    (['low:=0.5', 'high:=0.1'], "'low' (0.5) must not exceed 'high' (0.1)"),
    (['protective_actions:=[STPO]'], "unknown action code name 'STPO'"),
    (['question_template:=Is there {thing}?'], 'available fields'),
    (['analyser:=gpt'], "'analyser'"),
])
def test_bad_configuration_fails_at_startup_with_the_reason(args, reason):
    cmd = [sys.executable, '-m', 'vidaction_ros.nodes.escalation_node', '--ros-args']
    for arg in args:
        cmd += ['-p', arg]
    proc = subprocess.run(cmd, cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=180,
                          env=dict(os.environ))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert reason in output, output
    assert 'Traceback' not in output, output
