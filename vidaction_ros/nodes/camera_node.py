"""Camera ingest node: a video file, V4L2 device, RTSP/HTTP stream or sensor_msgs/Image topic in,
FrameRef out at the reasoning rate, gated by scene change.

Two pacing modes:
  live (default)  - the capture thread grabs each frame and, on the same thread, takes it at `rate_hz`,
                    downscales it straight into the transport's buffer, gates it and publishes it: no hand-over
                    to another thread between the grab and the publish. Publishing never waits for the
                    embedder (its queue keeps the newest frame), so inference never blocks capture.
  lockstep        - for tests and replay: every frame of a file is published in order, stamped with its
                    media time, and the next one only after the Action for the previous one came back.
"""
from __future__ import annotations

import threading
import time

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CompressedImage, Image

from .. import qos
from ..transport import intra_process
from ..ingest.bags import BagFrameSource, is_bag_path
from ..ingest.compressed import message_to_bgr
from ..conversions import to_time
from ..diagnostics import DiagnosticsPublisher, RateMeter, health
from ..ingest.frame_source import (DEMO_VIDEO, Backoff, CaptureThread, CapturedFrame, OpenCvSource, downscale,
                            downscale_into, redact_url, working_size)
from ..ingest.image_codec import ImageFormatError
from ..msg import Action, FrameRef, SceneUnchanged
from ..params import Param, ParameterError
from ..ingest.rate import RateLimiter
from ..ingest.scene_gate import SceneChangeGate
from ..transport.frame_transport import MODES, FrameSender
from .lifecycle import ManagedNode
from .runtime import main_for

DEFAULT_VIDEO = DEMO_VIDEO

PARAMS = [
    Param('source', DEFAULT_VIDEO, 'video file path, V4L2 device (/dev/video0 or 0), rtsp:// or http:// URL, '
          'a rosbag2 bag (directory or .mcap/.db3), or "topic" to subscribe to image_topic', allow_empty=False),
    Param('image_topic', 'image_raw', 'input image topic when source is "topic"'),
    Param('image_transport', 'auto', 'type of image_topic: raw (sensor_msgs/Image), compressed '
          '(sensor_msgs/CompressedImage), or auto (compressed when the name ends in /compressed)',
          choices=('auto', 'raw', 'compressed')),
    Param('bag_topic', '', 'image topic to read when source is a rosbag2 bag ("" = its only image topic)'),
    Param('loop', False, 'restart a video file at its end'),
    Param('realtime', True, 'pace a video file at its own fps, as a camera would deliver it'),
    Param('reconnect_max_s', 10.0, 'a live source that drops is reopened with backoff from 0.5 s, doubling up to '
          'this', 0.5, 600.0),
    Param('max_width', 640, 'working resolution: frames are downscaled at once to fit', 16, 8192),
    Param('max_height', 480, 'working resolution height bound', 16, 8192),
    Param('rate_hz', 10.0, 'reasoning rate: frames per second handed to the embedder', 0.1, 240.0),
    Param('gate_enabled', True, 'skip frames that look like the last published one'),
    Param('gate_threshold', 2.0, 'scene-change gate: mean absolute grey difference (0-255) that counts as a '
          'change', 0.0, 255.0),
    Param('gate_max_skip_s', 1.0, 'publish a keyframe at least this often even if nothing changed', 0.01, 3600.0),
    Param('transport', 'iox', 'frame transport: inproc (composed, by reference), iox (Eclipse iceoryx2 '
          'shared-memory samples: processes on one host, no DDS on the hot path; default), cuda (frames uploaded '
          'once to GPU memory shared by CUDA IPC, named by iceoryx2 samples: a GPU embedder in another process '
          'reads them in place) or image (pixels in the message: other hosts, or interop)',
          choices=MODES),
    Param('interop_image_topic', '', 'also publish sensor_msgs/Image here for rviz/rqt/bags ("" = off)'),
    Param('frame_id', 'camera', 'frame_id of published headers'),
    Param('stamp_source', 'wall', 'header stamp of file/device frames: wall (capture wall clock) or media (file '
          'media time). Topic input always keeps the incoming header stamp (the driver\'s capture time)',
          choices=('wall', 'media')),
    Param('lockstep', False, 'publish every frame in order, each after the previous Action (deterministic)'),
    Param('lockstep_timeout_s', 20.0, 'lockstep: re-send a frame whose Action did not come back in time',
          0.1, 3600.0),
    Param('lockstep_action_subscribers', 1, 'lockstep: start once this many nodes subscribe to `action` '
          '(the camera itself counts; raise it so a recorder or test hears the first frame)', 1, 1000),
    Param('lockstep_settle_s', 1.0, 'lockstep: wait this long after downstream is discovered before the first '
          'frame, so DDS endpoint matching between the other nodes completes', 0.0, 60.0),
    Param('shutdown_at_end', False, 'shut the process down when a non-looping file ends'),
    Param('max_frames', 0, 'stop after publishing this many frames (0 = no limit); for tests and benches',
          0, 2**31),
]


class CameraNode(ManagedNode):
    PARAMS = PARAMS

    def __init__(self, name: str = 'camera', **kwargs):
        super().__init__(name, **kwargs)
        if self.p['lockstep'] and self.p['source'] == 'topic':
            raise ParameterError("parameter 'lockstep': needs a file source, not source='topic'")
        self.counts = {'captured': 0, 'published': 0, 'gated': 0, 'dropped': 0, 'rate_skipped': 0,
                       'bad_input': 0, 'resent': 0}
        self.finished = threading.Event()
        self.sender = None
        self.capture = None
        self.source = None
        self._rates = RateMeter()
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostics)   # reports in every state
        if self.p['autostart']:
            self.bring_up()

    # -- lifecycle -----------------------------------------------------------------------------------------
    def configure(self) -> None:
        self.sender = FrameSender(self, self.p['transport'], 'camera/frame', lockstep=self.p['lockstep'],
                                  interop_topic=self.p['interop_image_topic'],
                                  max_frame=(self.p['max_width'], self.p['max_height']))
        # Live capture publishes on the capture thread, which must never wait for the embedder.
        self.sender.may_wait = self.p['lockstep'] or self.p['source'] == 'topic'
        self.own(self.sender.publisher)
        if self.sender.interop is not None:
            self.own(self.sender.interop)
        self.gate = SceneChangeGate(self.p['gate_threshold'], self.p['gate_max_skip_s'],
                                    enabled=self.p['gate_enabled'] and not self.p['lockstep'])
        # A gated frame is still news: the scene is as it was. Without it a static scene would look like a
        # dead pipeline to the policy's watchdog whenever gate_max_skip_s exceeds its deadline.
        self.unchanged = self.own(self.create_publisher(SceneUnchanged, 'camera/unchanged', qos.EMBEDDING))
        self.rate = RateLimiter(self.p['rate_hz'])
        self.sequence = 0
        self.finished.clear()
        group = MutuallyExclusiveCallbackGroup()
        if self.p['source'] == 'topic':
            self.own(self.create_subscription(self._input_type(), self.p['image_topic'], self._on_image,
                                              qos.IMAGE, callback_group=group))
        elif self.p['lockstep']:
            self.source = self._open_source(loop=False)
            self.source.open()   # fails the configure transition with the path when it cannot be opened
            self._pending: FrameRef | None = None
            self._pending_image = None
            self._sent_at = 0.0
            self.own(self.create_subscription(Action, 'action', self._on_action, qos.ACTION, callback_group=group))
            self.own(self.create_timer(0.05, self._lockstep_tick, callback_group=group))
        else:
            self.source = self._open_source(loop=self.p['loop'])
            if not self.source.is_live:
                self.source.open()    # a missing file fails now; live devices reconnect with backoff instead
                self.source.close()
            self.capture = CaptureThread(self.source, self.p['max_width'], self.p['max_height'],
                                         realtime=self.p['realtime'], logger=self.get_logger(),
                                         backoff=Backoff(0.5, self.p['reconnect_max_s']),
                                         on_frame=self._on_captured, on_finished=self._finish)
        self.get_logger().info(
            f"camera configured: source={self.source.display_uri if self.source else self.p['image_topic']} "
            f"transport={self.p['transport']} rate={self.p['rate_hz']} Hz lockstep={self.p['lockstep']}")

    def activate(self) -> None:
        if self.p['lockstep']:
            self._started = False
            self._ready_since = None
        elif self.capture is not None:
            self.capture.start()

    def deactivate(self) -> None:
        if self.capture is not None:
            self.capture.stop()     # closes the device; activate reopens it (a file restarts)

    def cleanup(self) -> None:
        if self.source is not None:
            self.source.close()
        if self.sender is not None:
            self.sender.close()     # unlinks the shared-memory ring (a SIGKILLed camera's is reclaimed at restart)
        self.sender = self.capture = self.source = None

    def _diagnostics(self):
        lifecycle = 'active' if self.active else 'inactive' if self.configured else 'unconfigured'
        state = (self.capture.state if self.capture is not None else 'topic' if self.p['source'] == 'topic'
                 else 'lockstep')
        info = {'lifecycle': lifecycle, 'state': state,
                'source': self.source.display_uri if self.source else redact_url(self.p['source']),
                'transport': self.p['transport'], 'rate_hz': self.p['rate_hz']}
        if self.capture is not None:
            info['reconnects'] = self.capture.reconnects
        counts = dict(self.counts)
        error = f'camera {state}' if state in ('failed', 'reconnecting', 'lost') else ''
        return health(counts, self._rates.rates(counts, time.monotonic()), None, info, error=error)

    # -- building and publishing -------------------------------------------------------------------------
    def _header_stamp_s(self, frame: CapturedFrame) -> float:
        keep_source_stamp = self.p['stamp_source'] == 'media' or self.p['source'] == 'topic'
        return frame.media_s if (keep_source_stamp and frame.media_s is not None) else frame.captured_wall_s

    def _make_ref(self, frame: CapturedFrame) -> FrameRef:
        msg = FrameRef()
        msg.header.stamp = to_time(self._header_stamp_s(frame))
        msg.header.frame_id = self.p['frame_id']
        msg.sequence = self.sequence
        self.sequence += 1
        msg.source_width, msg.source_height = frame.source_size
        msg.times.captured = to_time(frame.captured_wall_s)
        return msg

    def _publish(self, msg: FrameRef, image) -> None:
        msg.times.published = to_time(time.time())
        if image is self.sender.loaned_view:
            self.sender.send_loaned(msg, image)     # filled in the transport's own buffer: no copy here
        else:
            self.sender.send(msg, image)
        self.counts['published'] += 1

    def _publish_unchanged(self, frame: CapturedFrame, score: float) -> None:
        msg = SceneUnchanged()
        msg.header.stamp = to_time(self._header_stamp_s(frame))
        msg.header.frame_id = self.p['frame_id']
        msg.same_as_sequence = self.sequence - 1
        msg.scene_change = float(score)
        msg.captured = to_time(frame.captured_wall_s)
        self.unchanged.publish(msg)

    def _limit_reached(self) -> bool:
        return 0 < self.p['max_frames'] <= self.counts['published']

    def _finish(self) -> None:
        if not self.finished.is_set():
            self.finished.set()
            self.get_logger().info(f'source finished: {self.counts}')
            if self.p['shutdown_at_end']:
                self._shutdown_soon()

    def _stamp_s(self, frame: CapturedFrame) -> float:
        return frame.media_s if frame.media_s is not None else frame.captured_wall_s

    def _rate_allows(self, stamp_s: float) -> bool:
        if self.rate.ready(stamp_s):
            return True
        self.counts['rate_skipped'] += 1
        return False

    def _gate_and_publish(self, frame: CapturedFrame) -> None:
        stamp_s = self._stamp_s(frame)
        result = self.gate.check(frame.image, stamp_s)
        if not result.passed:
            self.counts['gated'] += 1
            if self.sequence > 0:   # something was handed on that this frame can be the same as
                self._publish_unchanged(frame, result.score)
            return
        msg = self._make_ref(frame)
        msg.scene_change = result.score if result.score != float('inf') else -1.0
        msg.keyframe = result.keyframe
        self._publish(msg, frame.image)
        if self.sender.publisher.get_subscription_count() == 0:
            # Nobody took that frame (a camera up before its embedder): it must not become the gate's
            # reference, or a static scene would be held back from the embedder, never decided, until
            # gate_max_skip_s. The next frame passes as a first frame again.
            self.gate.reset()
            self.counts['unheard'] = self.counts.get('unheard', 0) + 1

    # -- live --------------------------------------------------------------------------------------------
    def _on_captured(self, image, index: int, media_s: float | None, grabbed_s: float) -> None:
        """Capture thread, each grabbed frame: rate, downscale into the transport's buffer, gate, publish."""
        if self.finished.is_set():
            return
        self.counts['captured'] = self.capture.captured
        try:
            if self._rate_allows(media_s if media_s is not None else grabbed_s):
                self._downscale_gate_publish(image, index, media_s, grabbed_s)
        except RCLError:
            if self.context.ok():
                raise
            return      # SIGINT shut the context down under this thread: the normal way out
        if self._limit_reached():
            self._finish()

    def _open_source(self, loop: bool):
        """A video file / device / URL through OpenCV, or a rosbag2 bag's image topic (same interface)."""
        source = self.p['source']
        if is_bag_path(source):
            return BagFrameSource(source, self.p['bag_topic'] or None, loop)
        return OpenCvSource(source, loop=loop)

    def _input_type(self):
        mode = self.p['image_transport']
        topic = self.p['image_topic'].rstrip('/')
        compressed = mode == 'compressed' or (mode == 'auto' and topic.endswith('/compressed'))
        return CompressedImage if compressed else Image

    def _on_image(self, msg) -> None:
        if not self.active:
            return
        try:
            image = message_to_bgr(msg)     # Image (any common encoding) or CompressedImage (jpeg/png)
        except ImageFormatError as err:
            self.counts['bad_input'] += 1
            self.get_logger().warning(f'dropped input image: {err}', throttle_duration_sec=5.0)
            return
        now = time.time()
        stamp_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if stamp_s == 0.0:
            # A driver that never sets the stamp: 0 would look like time jumping back to memory and policy
            # (window cleared, hysteresis reset) on every frame. Receive time is the best capture time left.
            self.counts['unstamped'] = self.counts.get('unstamped', 0) + 1
            if self.counts['unstamped'] == 1:
                self.get_logger().warning(f"input images on '{self.p['image_topic']}' have header.stamp 0: "
                                          'stamping them with the receive time (counted as unstamped)')
            stamp_s = now
        self.counts['captured'] += 1
        if not self._rate_allows(stamp_s):      # before the resize: skipped frames cost no pixel work
            return
        # A bag's stamps are the capture times: keep them (media), never the replay wall clock.
        self._downscale_gate_publish(image, self.counts['captured'] - 1, stamp_s, now)

    def _downscale_gate_publish(self, image, index: int, media_s: float | None, captured_s: float) -> None:
        # Downscale straight into the transport's buffer (the iceoryx2 sample itself; in composed mode the
        # array the embedder will get): the working-size frame is written once, gated while it is still in
        # this core's cache, and never copied.
        source_h, source_w = image.shape[:2]
        width, height = working_size(source_w, source_h, self.p['max_width'], self.p['max_height'])
        if (width, height) == (source_w, source_h) and image.flags.c_contiguous:
            # Already the working size: send() takes it as it is (by reference composed, one copy iox). A
            # padded row layout (a topic image whose step exceeds its width) goes through the loan: consumers
            # get contiguous frames.
            self._gate_and_publish(CapturedFrame(image, index, media_s, captured_s, (source_w, source_h)))
            return
        view = self.sender.loan(height, width)
        try:
            downscale_into(image, view)
            self._gate_and_publish(CapturedFrame(view, index, media_s, captured_s, (source_w, source_h)))
        finally:
            self.sender.abandon(view)           # gated (or failed): the slot goes back unpublished; no-op if sent

    # -- lockstep ----------------------------------------------------------------------------------------
    def _downstream_ready(self) -> bool:
        # transport iox: the embedder's iceoryx2 reader too (it opens once this camera's service exists).
        return (self.sender.publisher.get_subscription_count() > 0
                and (self.sender.iox is None or self.sender.iox.subscribers() > 0)
                and self._listeners('embedding') > 0
                and self._listeners('memory/context') > 0
                and self.count_publishers('action') > 0
                and self.count_subscribers('action') >= self.p['lockstep_action_subscribers'])

    def _listeners(self, topic: str) -> int:
        # Composed mode hands embedding and memory/context over by reference: count those subscribers too.
        return self.count_subscribers(topic) + intra_process.subscriber_count(self, topic)

    def _next_lockstep(self) -> None:
        image, index, media = (None, 0, None) if self._limit_reached() else self.source.read()
        if image is None:
            self._pending = None
            self._finish()
            return
        now = time.time()
        h, w = image.shape[:2]
        small = downscale(image, self.p['max_width'], self.p['max_height'])
        self.counts['captured'] += 1
        frame = CapturedFrame(small, index, media, now, (w, h))
        msg = self._make_ref(frame)
        msg.scene_change = -1.0
        self._pending, self._pending_image = msg, small
        self._sent_at = time.monotonic()
        self._publish(msg, small)

    def _lockstep_tick(self) -> None:
        if self.finished.is_set() or not self.active:
            return
        if not self._started:
            # The ROS graph shows a subscriber before every publisher has matched it: a fast policy node
            # would publish the first Actions before a late subscriber's match completes, and reliable
            # volatile QoS drops them. Start once downstream has looked ready for lockstep_settle_s.
            if not self._downstream_ready():
                self._ready_since = None
            elif self._ready_since is None:
                self._ready_since = time.monotonic()
            elif time.monotonic() - self._ready_since >= self.p['lockstep_settle_s']:
                self._started = True
                self._next_lockstep()
            return
        if self._pending is not None and time.monotonic() - self._sent_at > self.p['lockstep_timeout_s']:
            self.counts['resent'] += 1
            self.get_logger().warning(f'no Action for frame {self._pending.sequence} within '
                                      f"{self.p['lockstep_timeout_s']} s: re-sending it")
            self._sent_at = time.monotonic()
            self._publish(self._pending, self._pending_image)

    def _on_action(self, msg: Action) -> None:
        if self.active and self._pending is not None and msg.frame_sequence == self._pending.sequence:
            self._next_lockstep()

    def _shutdown_soon(self) -> None:
        # The process stops in order, as on a signal (the last Action still goes out); a node made without
        # a ProcessStop (a test's, another program's) shuts its context down instead.
        from .process_stop import request_stop
        self.create_timer(0.5, lambda: request_stop('end of the replayed file') or rclpy.try_shutdown())


def main(args=None) -> int:
    return main_for(CameraNode)


if __name__ == '__main__':
    raise SystemExit(main())
