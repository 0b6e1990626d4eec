"""Overlay node (optional, overlay:=true): what the pipeline sees and decides, as a picture.

    camera/frame (FrameRef) ──▶ the last `frame_ring` frame references
    action (Action) ──▶ at most `rate_hz` (and every change) ──▶ draw on its frame ──▶ overlay/compressed (JPEG)

Off the hot path: its own node (its own process in the launch graph), best-effort subscriptions, and it only
listens, so the policy never waits for it. A frame is resolved only when an Action is drawn (rate_hz, not every
frame): in composed mode a reference, across processes one copy out of the camera's ring. The picture is drawn
by vidaction_ros/overlay/draw.py: the policy's region polygons, the Action's detections (box, class,
confidence), the top rule scores against their enter/exit thresholds, the action with its trigger and
camera->Action latency, and a FAILSAFE banner when the watchdog fires (drawn on the newest frame).
View it with rqt_image_view, rviz (Image display, topic overlay/compressed via image_transport) or Foxglove.
"""
from __future__ import annotations

import time
from collections import OrderedDict

from sensor_msgs.msg import CompressedImage

from .. import qos
from ..diagnostics import DiagnosticsPublisher, health
from ..ingest.image_codec import ImageFormatError
from ..msg import Action, FrameRef
from ..overlay.draw import encode_jpeg, render, state_from_action
from ..params import Param
from ..paths import resolve_policy_file
from ..stats import LatencyWindow
from ..transport.frame_store import FrameLost
from ..transport.frame_transport import host_array, resolve
from .lifecycle import ManagedNode
from .runtime import main_for

PARAMS = [
    Param('policy_file', '', 'policy YAML whose regions are drawn ("" = the package default; use the policy '
          'node\'s file)'),
    Param('rate_hz', 5.0, 'draw at most this many Actions per second (every change of action is drawn too)',
          0.1, 60.0),
    Param('jpeg_quality', 80, 'JPEG quality of overlay/compressed', 10, 100),
    Param('top_scores', 3, 'rules shown as score bars, highest score first', 0, 20),
    Param('frame_ring', 16, 'frame references kept for the Actions that name them (~1.6 s at 10 Hz)', 1, 300),
    Param('foxglove', False, 'also serve a live Foxglove view (foxglove-sdk WebSocket server): the overlay, '
          'every Action and every rule\'s score as time series; layout config/foxglove_layout.json'),
    Param('foxglove_host', '127.0.0.1', 'address the Foxglove WebSocket server listens on (loopback by default: '
          'open it to the network only on purpose)', allow_empty=False),
    Param('foxglove_port', 8765, 'port of the Foxglove WebSocket server (0 = any free port, logged)', 0, 65535),
]


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


class OverlayNode(ManagedNode):
    PARAMS = PARAMS

    def __init__(self, name: str = 'overlay', **kwargs):
        super().__init__(name, **kwargs)
        self.refs: OrderedDict[int, FrameRef] = OrderedDict()
        self.view = None    # FoxgloveView when foxglove:=true
        self.regions: dict = {}
        self.counts = {'drawn': 0, 'skipped_rate': 0, 'lost': 0, 'no_frame': 0}
        self.draw_ms = LatencyWindow()
        self._next_at = 0.0
        self._last_action = ''
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostics)
        if self.p['autostart']:
            self.bring_up()

    def configure(self) -> None:
        from ..policy import load_policy
        spec = load_policy(resolve_policy_file(self.p['policy_file']))   # PolicyError names the file and field
        self.regions = {name: region.polygon for name, region in spec.regions.items()}
        self.publisher = self.own(self.create_publisher(CompressedImage, 'overlay/compressed', qos.OVERLAY))
        self.own(self.create_subscription(FrameRef, 'camera/frame', self._on_frame, qos.FRAME))
        self.own(self.create_subscription(Action, 'action', self._on_action, qos.ACTION))
        self.get_logger().info(f"overlay up: regions {sorted(self.regions)}, at most {self.p['rate_hz']} Hz on "
                               f"{self.publisher.topic_name}")
        if self.p['foxglove']:
            from ..overlay.foxglove_view import FoxgloveView
            self.view = FoxgloveView(self.p['foxglove_host'], self.p['foxglove_port'], name=self.get_name())
            self.get_logger().info(f"Foxglove live view: ws://{self.p['foxglove_host']}:{self.view.port} "
                                   f"(layout config/foxglove_layout.json)")

    def cleanup(self) -> None:
        self.refs.clear()
        if self.view is not None:
            self.view.close()
        self.view = None

    def _on_frame(self, ref: FrameRef) -> None:
        if not self.active:
            return
        self.refs[int(ref.sequence)] = ref
        while len(self.refs) > self.p['frame_ring']:
            self.refs.popitem(last=False)

    def _on_action(self, msg: Action) -> None:
        if not self.active:
            return
        if self.view is not None and self.view.watched:
            self._stream(msg)
        now = time.monotonic()
        changed = msg.action != self._last_action
        self._last_action = msg.action
        if now < self._next_at and not changed:
            self.counts['skipped_rate'] += 1
            return
        # The watchdog's Action names the last decided frame: draw the banner on the newest frame instead.
        sequence = next(reversed(self.refs), None) if msg.trigger == Action.TRIGGER_WATCHDOG else msg.frame_sequence
        ref = self.refs.get(sequence) if sequence is not None else None
        if ref is None:
            self.counts['no_frame'] += 1
            return
        started = time.perf_counter()
        try:
            image = host_array(resolve(ref))
        except (FrameLost, ImageFormatError) as err:
            self.counts['lost'] += 1
            self.get_logger().warning(f'frame {ref.sequence} lost: {err}', throttle_duration_sec=5.0)
            return
        out = CompressedImage()
        out.header = msg.header
        out.format = 'jpeg'
        out.data = encode_jpeg(render(image, state_from_action(msg, self.regions), self.p['top_scores']),
                               self.p['jpeg_quality'])
        self.publisher.publish(out)
        if self.view is not None:
            self.view.picture(stamp_ns(msg), bytes(out.data), msg.header.frame_id)
        self.draw_ms.add((time.perf_counter() - started) * 1e3)
        self.counts['drawn'] += 1
        self._next_at = now + 1.0 / self.p['rate_hz']

    def _stream(self, msg: Action) -> None:
        stamp = stamp_ns(msg)
        self.view.action(stamp, {'action': msg.action, 'action_code': int(msg.action_code), 'trigger': msg.trigger,
                                 'changed': bool(msg.changed), 'score': float(msg.score),
                                 'threshold': float(msg.threshold), 'region': msg.region, 'reason': msg.reason,
                                 'frame_sequence': int(msg.frame_sequence),
                                 'latency_ms': float(msg.capture_to_decide_ms)})
        if msg.scores:
            self.view.rule_scores(stamp, {s.name: (float(s.score), float(s.enter)) for s in msg.scores})

    def _diagnostics(self):
        info = {'lifecycle': 'active' if self.active else 'inactive' if self.configured else 'unconfigured'}
        latency = {f'draw_{k}': v for k, v in self.draw_ms.summary().items()}
        return health(dict(self.counts), {}, latency, info)


def main(args=None) -> int:
    return main_for(OverlayNode)


if __name__ == '__main__':
    raise SystemExit(main())
