"""The bad-input table (issue #8): every kind of bad input the nodes can receive, fed to the real core that
catches it. docs/faults.md ("Bad input") shows the same table (test_docs_table_matches_the_rows keeps them in
step).

Each row says what is wrong, how it is fed, and what must happen:
  * a clear error: the exception type and a regex its message must match, naming the field and the value;
  * and/or a counted drop: a counter that grows by exactly 1, and a following good input that still works
    (the bad one cost only itself; nothing else is lost).
Inputs are real: sensor_msgs/Image and CompressedImage messages, vidaction Embedding messages, an hnswlib
memory, policy YAML files in tmp_path, rclpy nodes declaring the camera's real parameter table, a real
OpenCV source on a closed port and on a missing device. Expected texts follow from the input (a 640 px
rgb8 row is 640 * 3 = 1920 bytes, so step 1919 is short), never from the code's output.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from vidaction_ros.ingest.image_codec import ImageFormatError

FAULTS_DOC = Path(__file__).resolve().parents[2] / 'docs' / 'faults.md'
SECRET = 'secret'   # the password of every URL below: must never appear in a log, an error or stderr


@dataclass
class Case:
    bad: Callable[[], Any]                         # feeds the bad input (raises for error rows)
    count: Callable[[], int] | None = None         # must grow by exactly 1 across bad()
    good: Callable[[], Any] | None = None          # a following good input: must still work
    check: Callable[[Any], None] | None = None     # extra assertions on bad()'s result or exception
    close: Callable[[], None] | None = None


@dataclass(frozen=True)
class Row:
    id: str
    make: Callable[['Env'], Case]
    error: type[BaseException] | None = None
    match: str = ''                                # re.search on str(error)


@dataclass
class Env:
    tmp_path: Path
    caplog: Any
    capfd: Any
    ros: Any

    def records(self, logger: logging.Logger) -> list[logging.LogRecord]:
        return [r for r in self.caplog.records if r.name == logger.name]


# -- images: sensor_msgs/Image through compressed.message_to_bgr (the camera node's topic input) ------------
def _image(height, width, encoding, step, nbytes):
    from sensor_msgs.msg import Image
    return Image(height=height, width=width, encoding=encoding, step=step, data=bytes(nbytes))


def _image_case(msg) -> Case:
    from vidaction_ros.ingest.compressed import message_to_bgr

    def good():   # the next, well-formed frame decodes: one bad frame poisons nothing
        assert message_to_bgr(_image(480, 640, 'rgb8', 1920, 1920 * 480)).shape == (480, 640, 3)
    return Case(bad=lambda: message_to_bgr(msg), good=good)


def _gradient() -> np.ndarray:
    y, x = np.mgrid[0:120, 0:160]
    return np.dstack([x * 255 // 159, y * 255 // 119, (x + y) % 256]).astype(np.uint8)


def _compressed_case(fmt: str, data: bytes) -> Case:
    from sensor_msgs.msg import CompressedImage

    from vidaction_ros.ingest.compressed import encode_compressed, message_to_bgr

    def good():
        ok_fmt, ok_data = encode_compressed(_gradient(), 'jpeg')
        assert message_to_bgr(CompressedImage(format=ok_fmt, data=ok_data)).shape == (120, 160, 3)
    return Case(bad=lambda: message_to_bgr(CompressedImage(format=fmt, data=data)), good=good)


def _truncated_jpeg() -> tuple[str, bytes]:
    from vidaction_ros.ingest.compressed import encode_compressed
    fmt, data = encode_compressed(_gradient(), 'jpeg')
    return fmt, data[:len(data) // 2]


# -- embeddings: vidaction Embedding messages through conversions.vector_from_msg (memory/policy nodes) -----
def _embedding_case(dim: int, values) -> Case:
    from vidaction_ros.conversions import vector_from_msg
    from vidaction_ros.msg import Embedding
    msg = Embedding(sequence=7, dim=dim, vector=[float(v) for v in values])

    def good():
        ok = Embedding(sequence=8, dim=4, vector=[0.5, 0.5, 0.5, 0.5])
        assert vector_from_msg(ok.vector, ok.dim or None, 'embedding 8').shape == (4,)
    # exactly what memory_node._on_embedding does
    return Case(bad=lambda: vector_from_msg(msg.vector, msg.dim or None, f'embedding {msg.sequence}'), good=good)


# -- the temporal memory (hnswlib): rejected inputs are counted and leave the window as it was ---------------
MEMORY_LOG = logging.getLogger('test_bad_inputs.memory')
STAMPS = (100.0, 100.5, 101.0)   # three stored frames; "now" is the newest


def _unit(i: int, dim: int = 4) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i % dim] = 1.0
    return v


def _memory():
    from vidaction_ros.memory import TemporalMemory
    memory = TemporalMemory(dim=4, capacity=16, ttl_s=30.0, max_future_s=5.0, logger=MEMORY_LOG)
    for seq, stamp in enumerate(STAMPS):
        memory.insert(seq, stamp, _unit(seq), now_s=stamp)
    return memory


def _memory_reject_case(vector=None, stamp: float = 101.5, now_s: float | None = 101.5) -> Case:
    memory = _memory()
    vector = _unit(3) if vector is None else vector

    def check(_):
        assert memory.size == len(STAMPS), 'a rejected input must leave the window unchanged'

    def good():   # the next good frame is stored beside the old ones: 3 + 1, nothing lost
        result = memory.insert(3, 101.6, _unit(3), now_s=101.6)
        assert (result.window_size, result.evicted, result.reset) == (len(STAMPS) + 1, 0, False)
    return Case(bad=lambda: memory.insert(3, stamp, vector, now_s=now_s),
                count=lambda: memory.stats()['rejected'], check=check, good=good)


def _memory_backwards(env: Env) -> Case:
    memory = _memory()

    def check(result):
        # Time going backwards (bag loop, clock jump) clears the window: the stored frames belong to another
        # timeline. The new frame is kept, and the reset is said once, with both stamps.
        assert result.reset and result.window_size == 1 and result.evicted == len(STAMPS)
        warnings = [r.getMessage() for r in env.records(MEMORY_LOG) if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert re.search(r'stamp 50\.000000 s is 51\.000000 s older than the newest stored stamp 101\.000000 s '
                         r'\(time went backwards\); clearing 3 entries', warnings[0])

    def good():
        assert memory.insert(5, 50.5, _unit(1)).window_size == 2
        assert sum(r.levelno >= logging.WARNING for r in env.records(MEMORY_LOG)) == 1, 'forward: no more warnings'
    return Case(bad=lambda: memory.insert(4, 50.0, _unit(0)), count=lambda: memory.stats()['resets'],
                check=check, good=good)


# -- the policy engine and policy files -----------------------------------------------------------------------
POLICY_LOG = logging.getLogger('test_bad_inputs.policy')
POLICY = {'version': 1, 'actions': [{'name': 'STOP', 'code': 'STOP', 'priority': 200, 'prompts': ['a person'],
                                     'contrast': ['an empty road'], 'enter': 0.1}]}
POLICY_YAML = """\
version: 1
actions:
  - name: STOP
    code: STOP
    priority: 200
    prompts: [a person]
    contrast: [an empty road]
    enter: 0.1
"""


def _engine():
    from vidaction_ros.policy import PolicyEngine, parse_policy
    texts = {'a person': 0, 'an empty road': 1}    # each prompt its own axis of a 4-d space
    spec = parse_policy({**POLICY, 'actions': [{**POLICY['actions'][0], 'min_hold_s': 1.0}]})
    return PolicyEngine(spec, lambda ts: np.stack([_unit(texts[t]) for t in ts]), logger=POLICY_LOG)


def _observation(stamp, sequence, vector):
    from vidaction_ros.policy import Observation
    return Observation(stamp_s=stamp, sequence=sequence, vector=vector)


def _policy_wrong_dim(env: Env) -> Case:
    engine = _engine()

    def good():
        assert engine.decide(_observation(1.1, 6, _unit(0))).action == 'STOP'
    return Case(bad=lambda: engine.decide(_observation(1.0, 5, np.ones(3))), good=good)


def _policy_backwards(env: Env) -> Case:
    engine = _engine()
    assert engine.decide(_observation(10.0, 1, _unit(0))).action == 'STOP'   # fires at 10 s

    def check(decision):
        warnings = [r.getMessage() for r in env.records(POLICY_LOG) if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert re.search(r'time went backwards \(10\.000 s -> 5\.000 s, frame 2\).*resetting rule states',
                         warnings[0])
        # Without the reset, min_hold (fired at 10 s, held 1 s) would keep STOP at 5 s: 5 < 10 + 1.
        assert decision.action == 'CONTINUE' and decision.trigger == 'default'

    def good():
        assert engine.decide(_observation(5.1, 3, _unit(0))).action == 'STOP'
        assert sum(r.levelno >= logging.WARNING for r in env.records(POLICY_LOG)) == 1
    return Case(bad=lambda: engine.decide(_observation(5.0, 2, _unit(1))), check=check, good=good)


def _policy_file(env: Env, text: str | None, name: str = 'policy.yaml') -> Case:
    from vidaction_ros.policy import load_policy
    path = env.tmp_path / name
    if text is not None:
        path.write_text(text)

    def good():
        ok = env.tmp_path / 'good_policy.yaml'
        ok.write_text(POLICY_YAML)
        assert [r.name for r in load_policy(ok).actions] == ['STOP']
    return Case(bad=lambda: load_policy(path), good=good)


# -- model files ------------------------------------------------------------------------------------------
def _model_case(env: Env, model_dir: Path) -> Case:
    from vidaction_ros.perception.backends import create_backend
    return Case(bad=lambda: create_backend('clip_onnx', model_path=str(model_dir)).activate())


def _model_without_onnx(env: Env) -> Case:
    import json

    from vidaction_ros.perception.backends.joint import CLIP_MEAN, CLIP_STD, MANIFEST, ModelSpec
    model_dir = env.tmp_path / 'export'
    model_dir.mkdir()
    spec = ModelSpec(model_id='clip:test', model_type='clip', dim=4, image_size=32, mean=CLIP_MEAN, std=CLIP_STD,
                     resize='shortest_crop', context_length=8, pad_id=0)
    (model_dir / MANIFEST).write_text(json.dumps(spec.to_manifest()))
    return _model_case(env, model_dir)


# -- parameters: the camera node's real parameter table, declared on a real rclpy node ----------------------
def _param_case(env: Env, overrides: dict) -> Case:
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from vidaction_ros.nodes.camera_node import PARAMS
    from vidaction_ros.params import declare
    node = Node(f'bad_inputs_{len(env.ros.nodes)}', context=env.ros.context,
                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    env.ros.nodes.append(node)

    def good():   # the same table on a node given good values declares fine
        ok = Node(f'bad_inputs_ok_{len(env.ros.nodes)}', context=env.ros.context,
                  parameter_overrides=[Parameter('rate_hz', value=5.0), Parameter('transport', value='image')])
        env.ros.nodes.append(ok)
        values = declare(ok, PARAMS)
        assert (values['rate_hz'], values['transport']) == (5.0, 'image')
    return Case(bad=lambda: declare(node, PARAMS), good=good)


def _param_unknown(env: Env) -> Case:
    case = _param_case(env, {'rate_hzz': 5.0})

    def check(values):
        assert values['rate_hz'] == 10.0, 'the typo changes nothing...'
        err = env.capfd.readouterr().err   # ...but is said (rclpy loggers write to stderr)
        assert re.search(r"unknown parameter 'rate_hzz' \(not declared by this node\): ignored; "
                         r"did you mean 'rate_hz'\?", err), err
    case.check = check
    return case


def _param_int_for_float(env: Env) -> Case:
    case = _param_case(env, {'rate_hz': 5, 'gate_threshold': 3})   # `-p rate_hz:=5`: an INTEGER

    def check(values):
        assert values['rate_hz'] == 5.0 and isinstance(values['rate_hz'], float)
        assert values['gate_threshold'] == 3.0 and isinstance(values['gate_threshold'], float)
    case.check = check
    return case


class _Ros:
    """One rclpy context for the parameter rows, made on first use."""

    def __init__(self):
        self._context = None
        self.nodes: list = []

    @property
    def context(self):
        if self._context is None:
            import rclpy
            self._context = rclpy.Context()
            rclpy.init(context=self._context)
        return self._context

    def shutdown(self):
        for node in self.nodes:
            node.destroy_node()
        if self._context is not None:
            self._context.try_shutdown()


# -- live sources: unreachable RTSP, unplugged V4L2 -------------------------------------------------------
CAPTURE_LOG = logging.getLogger('test_bad_inputs.capture')


def _source_case(env: Env, uri: str, shown: str) -> Case:
    from vidaction_ros.ingest.frame_source import Backoff, CaptureThread, OpenCvSource
    delays: list[float] = []

    class RecordingBackoff(Backoff):
        def next_delay(self) -> float:
            delay = super().next_delay()
            delays.append(delay)
            return delay

    def check(error):
        # A live source is never given up: the capture thread retries with growing, capped delays and says
        # so once per state change, however many attempts fail.
        capture = CaptureThread(OpenCvSource(uri), 64, 64, backoff=RecordingBackoff(0.01, 0.04), logger=CAPTURE_LOG)
        capture.start()
        deadline = time.monotonic() + 30
        while capture.reconnects < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        capture.stop()
        assert capture.reconnects >= 5 and capture.state == 'reconnecting'
        assert delays[:5] == [0.01, 0.02, 0.04, 0.04, 0.04]
        records = env.records(CAPTURE_LOG)
        assert len(records) == 1 and records[0].levelno == logging.WARNING, [r.getMessage() for r in records]
        assert re.search(rf'capture reconnecting: {re.escape(shown)} \(.*; retrying with backoff 0\.01 s doubling '
                         rf'to 0\.04 s\)', records[0].getMessage())
        out = env.capfd.readouterr()
        everything = '\n'.join([str(error), out.out, out.err] + [r.getMessage() for r in env.caplog.records])
        assert SECRET not in everything
    return Case(bad=lambda: OpenCvSource(uri).open(), check=check)


# -- bounded queues: drop the oldest, count it -------------------------------------------------------------
def _capture_slot(env: Env) -> Case:
    from vidaction_ros.ingest.frame_source import CapturedFrame, LatestFrameSlot
    slot = LatestFrameSlot()
    frame = lambda i: CapturedFrame(np.full((2, 2, 3), i, np.uint8), i, None, 0.0, (2, 2))   # noqa: E731
    slot.put(frame(0))

    def good():
        taken = slot.take()
        assert taken.index == 1 and int(taken.image[0, 0, 0]) == 1    # the newest frame, intact
        slot.put(frame(2))
        assert slot.take().index == 2 and slot.overwritten == 1        # a consumer in time: no drop
    return Case(bad=lambda: slot.put(frame(1)), count=lambda: slot.overwritten, good=good)


def _frame_store(env: Env) -> Case:
    from vidaction_ros.transport.frame_store import InprocFrameStore
    store = InprocFrameStore('bad_inputs', slots=2)
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(3)]
    refs = [store.put(f) for f in frames]      # the third put reuses slot 0: frame 0 is gone

    def good():
        assert store.get(*refs[2]) is frames[2] and store.get(*refs[1]) is frames[1]
    return Case(bad=lambda: store.get(*refs[0]), count=lambda: store.lost, good=good)


def _escalation_queue(env: Env) -> Case:
    from vidaction_ros.escalation import LatestWinsWorker
    release = threading.Event()
    handled = []

    def handle(job):
        handled.append((job.item, job.dropped_before))
        release.wait(10)
    worker = LatestWinsWorker(handle)
    worker.submit('A')                 # running
    deadline = time.monotonic() + 10
    while not worker.busy and time.monotonic() < deadline:
        time.sleep(0.001)
    assert worker.busy
    worker.submit('B')                 # waiting: the one-deep queue is full

    def check(accepted):
        assert accepted is False       # C replaced B

    def good():
        release.set()
        assert worker.wait_idle(10)
        assert handled == [('A', 0), ('C', 1)]   # B dropped, and the next result says one was dropped
        assert worker.submit('D') is True and worker.wait_idle(10)
    return Case(bad=lambda: worker.submit('C'), count=lambda: worker.dropped, check=check, good=good,
                close=lambda: (release.set(), worker.close()))


ROWS = [
    # images
    Row('image-zero-size', lambda env: _image_case(_image(0, 640, 'rgb8', 1920, 0)),
        ImageFormatError, r'zero-size image 640x0'),
    Row('image-step-too-small', lambda env: _image_case(_image(480, 640, 'rgb8', 1919, 1919 * 480)),
        ImageFormatError, r'step 1919 < width\*channels = 1920 for rgb8'),
    Row('image-data-short', lambda env: _image_case(_image(480, 640, 'rgb8', 1920, 1920 * 480 - 1)),
        ImageFormatError, r'data has 921599 bytes, expected step\*height = 921600'),
    Row('image-unsupported-encoding', lambda env: _image_case(_image(4, 4, '32FC1', 16, 64)),
        ImageFormatError, r"unsupported encoding '32FC1'; supported: \[.*'bgr8'.*'mono16'.*'yuv422'"),
    Row('image-yuv422-odd-width', lambda env: _image_case(_image(2, 5, 'yuv422', 10, 20)),
        ImageFormatError, r'yuv422 needs an even width \(2 pixels share chroma\), got 5'),
    # compressed images
    Row('compressed-truncated-jpeg', lambda env: _compressed_case(*_truncated_jpeg()),
        ImageFormatError, r"format 'bgr8; jpeg compressed bgr8': jpeg data \(\d+ bytes\) does not decode "
                          r"\(truncated or corrupt\)"),
    Row('compressed-empty', lambda env: _compressed_case('jpeg', b''),
        ImageFormatError, r"format 'jpeg': empty data"),
    Row('compressed-not-an-image', lambda env: _compressed_case('jpeg', b'GIF89a' + bytes(20)),
        ImageFormatError, r"format 'jpeg': data \(26 bytes, starting 47494638\) is neither JPEG nor PNG"),
    Row('compressed-video-codec', lambda env: _compressed_case('h264', bytes(16)),
        ImageFormatError, r"format 'h264': no single codec named; supported: jpeg, png"),
    # embedding messages
    Row('embedding-nan', lambda env: _embedding_case(4, [0.5, 0.5, float('nan'), 0.5]),
        ValueError, r'embedding 7 contains NaN or Inf: 1 non-finite value\(s\), first at index 2 = nan'),
    Row('embedding-wrong-dim', lambda env: _embedding_case(512, [0.05] * 384),
        ValueError, r'embedding 7 has dimension 384, expected 512'),
    Row('embedding-empty', lambda env: _embedding_case(0, []), ValueError, r'embedding 7 is empty'),
    # temporal memory
    Row('memory-nan', lambda env: _memory_reject_case(vector=[0.5, float('nan'), 0.5, 0.5]),
        ValueError, r'vector: expected finite values, got 1 non-finite \(NaN/Inf\), first at index 1 = nan'),
    Row('memory-inf', lambda env: _memory_reject_case(vector=[0.5, 0.5, float('inf'), float('-inf')]),
        ValueError, r'vector: expected finite values, got 2 non-finite \(NaN/Inf\), first at index 2 = inf'),
    Row('memory-wrong-dim', lambda env: _memory_reject_case(vector=np.ones(3)),
        ValueError, r'vector: wrong dimension, expected shape \(4,\), got shape \(3,\)'),
    Row('memory-zero-vector', lambda env: _memory_reject_case(vector=np.zeros(4)),
        ValueError, r'vector: zero-norm vector'),
    Row('memory-stamp-future', lambda env: _memory_reject_case(stamp=161.5, now_s=101.5),
        ValueError, r'stamp_s=161\.5 is 60 s ahead of now_s=101\.5; at most max_future_s=5\.0 s ahead'),
    Row('memory-stamp-nan', lambda env: _memory_reject_case(stamp=float('nan')),
        ValueError, r'stamp_s: expected a finite number, got nan'),
    Row('memory-stamp-backwards', _memory_backwards),
    # policy engine and files
    Row('policy-wrong-dim', _policy_wrong_dim,
        ValueError, r'frame 5 embedding: expected a vector of shape \(4,\).*got shape \(3,\)'),
    Row('policy-stamp-backwards', _policy_backwards),
    Row('policy-file-yaml-syntax',
        lambda env: _policy_file(env, 'version: 1\nactions:\n  - name: STOP\n   code: STOP\n'),
        Exception, r'policy\.yaml: \(yaml\): expected valid YAML, got a syntax error at line 4'),
    Row('policy-file-unknown-key', lambda env: _policy_file(env, POLICY_YAML.replace('enter:', 'entr:')),
        Exception, r"policy\.yaml: actions\[0\]\.entr: expected one of the keys .*did you mean 'enter'\?, "
                   r"got unknown key 'entr'"),
    Row('policy-file-wrong-type', lambda env: _policy_file(env, POLICY_YAML.replace('0.1', 'high')),
        Exception, r"policy\.yaml: actions\[0\]\.enter: expected a number in \(-2, 2\], got 'high' \(str\)"),
    Row('policy-file-missing', lambda env: _policy_file(env, None, 'missing.yaml'),
        Exception, r'missing\.yaml: \(file\): expected an existing policy file, got no such file'),
    # model files
    Row('model-dir-missing', lambda env: _model_case(env, env.tmp_path / 'no_model'),
        RuntimeError, r"model_path '.*/no_model' is not a directory"),
    Row('model-onnx-missing', _model_without_onnx,
        RuntimeError, r'export: image_encoder\.onnx is missing'),
    # parameters
    Row('param-bad-choice', lambda env: _param_case(env, {'transport': 'udp'}),
        ValueError, r"parameter 'transport': must be one of \[.*'iox'.*\], got 'udp'"),
    Row('param-out-of-range', lambda env: _param_case(env, {'rate_hz': 500.0}),
        ValueError, r"parameter 'rate_hz': .*500\.0.*Max: 240\.0"),
    Row('param-wrong-type', lambda env: _param_case(env, {'max_width': '640px'}),
        ValueError, r"parameter 'max_width': .*'640px'.*'STRING'.*'INTEGER'"),
    Row('param-empty', lambda env: _param_case(env, {'source': ' '}),
        ValueError, r"parameter 'source': must not be empty"),
    Row('param-unknown-name', _param_unknown),
    Row('param-int-for-float', _param_int_for_float),
    # live sources
    Row('rtsp-unreachable', lambda env: _source_case(env, f'rtsp://user:{SECRET}@127.0.0.1:9/stream',
                                                     'rtsp://***@127.0.0.1:9/stream'),
        RuntimeError, r'^cannot open stream source rtsp://\*\*\*@127\.0\.0\.1:9/stream$'),
    Row('v4l2-unplugged', lambda env: _source_case(env, '/dev/video99', '/dev/video99'),
        RuntimeError, r'^cannot open v4l2 source /dev/video99: no such device \(unplugged\?\)$'),
    # bounded queues
    Row('queue-capture-slot-full', _capture_slot),
    Row('queue-frame-ring-overwritten', _frame_store,
        LookupError, r"store 'bad_inputs': slot 0 now holds generation 2, frame of generation 1 was overwritten"),
    Row('queue-escalation-full', _escalation_queue),
]

# The exact exception classes (the broad ones above keep the regexes readable in the table).
EXACT = {'policy-file': 'PolicyError', 'model-': 'BackendUnavailable', 'param-': 'ParameterError',
         'memory-': 'MemoryInputError', 'rtsp-': 'SourceError', 'v4l2-': 'SourceError', 'queue-frame': 'FrameLost'}


@pytest.fixture(scope='module')
def ros():
    ros = _Ros()
    yield ros
    ros.shutdown()


@pytest.mark.parametrize('row', ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row, tmp_path, caplog, capfd, ros):
    if row.id == 'v4l2-unplugged' and os.path.exists('/dev/video99'):
        pytest.skip('/dev/video99 exists on this machine')
    caplog.set_level(logging.DEBUG)
    env = Env(tmp_path, caplog, capfd, ros)
    case = row.make(env)
    try:
        before = case.count() if case.count is not None else None
        if row.error is not None:
            with pytest.raises(row.error, match=row.match) as info:
                case.bad()
            result = info.value
            exact = next((name for prefix, name in EXACT.items() if row.id.startswith(prefix)), None)
            if exact is not None:
                assert type(result).__name__ == exact
        else:
            result = case.bad()
        if case.count is not None:
            assert case.count() == before + 1, 'the drop must be counted, exactly once'
        if case.check is not None:
            case.check(result)
        if case.good is not None:
            case.good()
    finally:
        if case.close is not None:
            case.close()


def test_table_is_large_and_ids_are_unique():
    ids = [r.id for r in ROWS]
    assert len(ids) >= 15 and len(set(ids)) == len(ids)


def test_docs_table_matches_the_rows():
    """The bad-input table of docs/faults.md (section "Bad input") lists exactly these test ids, in order."""
    text = FAULTS_DOC.read_text()
    section = text[text.index('## Bad input'):]
    section = section[:section.index('\n## ', 1)]
    documented = re.findall(r'^\|.*\|\s*`([a-z0-9-]+)`\s*\|\s*$', section, flags=re.M)
    assert documented == [r.id for r in ROWS]


@pytest.mark.parametrize('url,shown', [
    ('rtsp://admin:secret@10.0.0.2:554/live', 'rtsp://***@10.0.0.2:554/live'),
    ('rtsps://admin:secret@cam.local/live?tcp', 'rtsps://***@cam.local/live?tcp'),
    ('rtsp://admin:p@ss/secret@cam/live', 'rtsp://***@cam/live'),          # unescaped '@' and '/' in it
    ('rtsp://secret@cam/live', 'rtsp://***@cam/live'),                     # token as user name
    ('http://cam/video.cgi?user=admin&pwd=secret&res=720', 'http://cam/video.cgi?user=admin&pwd=***&res=720'),
    ('http://cam/mjpg?Password=secret', 'http://cam/mjpg?Password=***'),
    ('https://cam/live?token=secret#x', 'https://cam/live?token=***#x'),
    ('http://cam.local/stream', 'http://cam.local/stream'),
    ('/dev/video0', '/dev/video0'),
])
def test_credentials_never_shown(url, shown):
    from vidaction_ros.ingest.frame_source import OpenCvSource, redact_url
    assert redact_url(url) == shown
    assert SECRET not in OpenCvSource(url).display_uri


# The startup rows again, now as a user meets them: the node executable with that setting, in its own process.
# One line naming the file or field, exit code 2, no traceback (issue: one-line failures).
YAML_SYNTAX = 'version: 1\nactions:\n  - name: STOP\n   code: STOP\n'
STARTUP_COMMANDS = {
    'policy-file-yaml-syntax': ('policy_node', YAML_SYNTAX, ()),
    'policy-file-unknown-key': ('policy_node', POLICY_YAML.replace('enter:', 'entr:'), ()),
    'policy-file-wrong-type': ('policy_node', POLICY_YAML.replace('0.1', 'high'), ()),
    'policy-file-missing': ('policy_node', None, ()),
    'model-dir-missing': ('embedder_node', '', ('backend:=clip_onnx', 'model_path:={tmp}/no_model')),
    'param-bad-choice': ('camera_node', '', ('transport:=udp',)),
    'param-out-of-range': ('camera_node', '', ('rate_hz:=500.0',)),
    'param-wrong-type': ('camera_node', '', ('max_width:=640px',)),
}


@pytest.mark.parametrize('row', [r for r in ROWS if r.id in STARTUP_COMMANDS], ids=lambda r: r.id)
def test_startup_row_from_the_node_executable_is_one_line_and_exit_2(row, tmp_path):
    import subprocess
    import sys
    module, policy_text, params = STARTUP_COMMANDS[row.id]
    cmd = [sys.executable, '-m', f'vidaction_ros.nodes.{module}', '--ros-args']
    if module == 'policy_node':            # policy_text None: the file is missing
        path = tmp_path / ('policy.yaml' if policy_text is not None else 'missing.yaml')
        if policy_text is not None:
            path.write_text(policy_text)
        cmd += ['-p', f'policy_file:={path}']
    for p in params:
        cmd += ['-p', p.format(tmp=tmp_path)]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-3000:]
    assert 'Traceback' not in out and 'terminate called' not in out, out[-3000:]
    assert re.search(row.match, out), (row.match, out[-3000:])
