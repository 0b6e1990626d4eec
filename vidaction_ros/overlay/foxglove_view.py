"""Live view in Foxglove: the foxglove-sdk WebSocket server (Foxglove WebSocket protocol) streaming the overlay
picture, every Action, and every rule's score as time series. Pure (no ROS): the overlay node hands it plain
values. Open Foxglove, "Open connection" -> ws://<host>:<port>, and load config/foxglove_layout.json.

Channels (JSON encoding unless noted):
  /overlay   foxglove.CompressedImage (protobuf): the overlay JPEG, at the overlay's rate
  /action    one record per Action: action, code, trigger, changed, score, threshold, rule region, reason,
             frame_sequence, camera->Action latency
  /scores    one record per decided frame: {rule name: score, <rule>_enter: threshold, ...} for the Plot panel
"""
from __future__ import annotations

ACTION_SCHEMA = {
    'type': 'object',
    'properties': {
        'stamp_ns': {'type': 'integer'}, 'action': {'type': 'string'}, 'action_code': {'type': 'integer'},
        'trigger': {'type': 'string'}, 'changed': {'type': 'boolean'}, 'score': {'type': ['number', 'null']},
        'threshold': {'type': ['number', 'null']}, 'region': {'type': 'string'}, 'reason': {'type': 'string'},
        'frame_sequence': {'type': 'integer'}, 'latency_ms': {'type': ['number', 'null']},
    },
}
SCORES_SCHEMA = {'type': 'object', 'additionalProperties': {'type': ['number', 'null']}}


def _json_number(x: float):
    """JSON has no NaN: a missing score is null (Foxglove's Plot skips it)."""
    return None if x != x else float(x)


class FoxgloveView:
    def __init__(self, host: str = '127.0.0.1', port: int = 8765, name: str = 'vidaction'):
        import foxglove
        from foxglove.channels import CompressedImageChannel
        self._foxglove = foxglove
        # A context of our own: the SDK's global one would mix in anything else logged in this process.
        self.context = foxglove.Context()
        self.server = foxglove.start_server(name=name, host=host, port=port, context=self.context)
        self.port = self.server.port
        self.overlay = CompressedImageChannel('/overlay', context=self.context)
        self.actions = foxglove.Channel('/action', schema=ACTION_SCHEMA, context=self.context)
        self.scores = foxglove.Channel('/scores', schema=SCORES_SCHEMA, context=self.context)

    @property
    def watched(self) -> bool:
        """A client subscribes to something: with nobody watching, nothing is built or logged."""
        return self.overlay.has_sinks() or self.actions.has_sinks() or self.scores.has_sinks()

    def picture(self, stamp_ns: int, jpeg: bytes, frame_id: str = '') -> None:
        if not self.overlay.has_sinks():
            return
        from foxglove.messages import CompressedImage, Timestamp
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        self.overlay.log(CompressedImage(timestamp=Timestamp(sec, nsec), frame_id=frame_id, data=jpeg,
                                         format='jpeg'), log_time=int(stamp_ns))

    def action(self, stamp_ns: int, record: dict) -> None:
        if not self.actions.has_sinks():
            return
        clean = {k: (_json_number(v) if isinstance(v, float) else v) for k, v in record.items()}
        self.actions.log({'stamp_ns': int(stamp_ns), **clean}, log_time=int(stamp_ns))

    def rule_scores(self, stamp_ns: int, scores: dict[str, tuple[float, float]]) -> None:
        """scores: {rule: (score, enter)} -> {rule: score, rule_enter: enter}: one line per rule and its
        threshold in the Plot panel."""
        if not self.scores.has_sinks():
            return
        record = {}
        for name, (score, enter) in scores.items():
            record[name] = _json_number(score)
            record[f'{name}_enter'] = _json_number(enter)
        self.scores.log(record, log_time=int(stamp_ns))

    def close(self) -> None:
        self.server.stop()
