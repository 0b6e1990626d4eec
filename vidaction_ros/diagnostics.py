"""Node health as diagnostic_msgs/DiagnosticArray on /diagnostics at 1 Hz (rqt_robot_monitor, the
diagnostic_aggregator and fleet tooling read it), built from the counters every node already keeps.

`health` (pure) turns a node's numbers into (level, message, key/values); `DiagnosticsPublisher` (rclpy)
publishes it. Rates are computed here from counter deltas, so nodes only count.
"""
from __future__ import annotations

import math
from typing import Callable

OK, WARN, ERROR, STALE = 0, 1, 2, 3     # diagnostic_msgs/DiagnosticStatus levels


def format_value(value) -> str:
    if isinstance(value, float):
        return 'nan' if math.isnan(value) else f'{value:.3f}'
    return str(value)


class RateMeter:
    """Per-second rates of monotonically increasing counters between two reports."""

    def __init__(self):
        self._last: dict[str, float] = {}
        self._last_t: float | None = None

    def rates(self, counts: dict[str, float], now: float) -> dict[str, float]:
        out = {}
        if self._last_t is not None and now > self._last_t:
            dt = now - self._last_t
            out = {k: (v - self._last.get(k, 0)) / dt for k, v in counts.items()}
        self._last, self._last_t = dict(counts), now
        return out


def health(counts: dict, rates: dict, latency: dict | None = None, info: dict | None = None,
           rate_key: str = '', expected_rate_hz: float = 0.0, error: str = '') -> tuple[int, str, list]:
    """(level, message, [(key, value)]) of one node. WARN when its main rate is under half the expected rate
    (after the first report) or anything was dropped/lost/rejected since the last report; ERROR on `error`."""
    values = [(k, format_value(v)) for k, v in (info or {}).items()]
    values += [(k, format_value(v)) for k, v in counts.items()]
    values += [(f'{k}_per_s', format_value(v)) for k, v in rates.items()]
    if latency:
        values += [(k, format_value(v)) for k, v in latency.items()]
    if error:
        return ERROR, error, values
    problems = []
    if rate_key and expected_rate_hz > 0 and rate_key in rates and rates[rate_key] < 0.5 * expected_rate_hz:
        problems.append(f'{rate_key} at {rates[rate_key]:.1f}/s, expected ~{expected_rate_hz:g}/s')
    for key in ('dropped', 'lost', 'rejected', 'bad_input', 'failsafes'):
        if rates.get(key, 0) > 0:
            problems.append(f'{key} rising')
    if problems:
        return WARN, '; '.join(problems), values
    return OK, 'ok', values


class DiagnosticsPublisher:
    """Publishes one DiagnosticStatus for `node` every `period_s` from `collect() -> (level, message, values)`."""

    def __init__(self, node, collect: Callable[[], tuple[int, str, list]], period_s: float = 1.0,
                 hardware_id: str = ''):
        from diagnostic_msgs.msg import DiagnosticArray
        self.node = node
        self.collect = collect
        self.hardware_id = hardware_id or node.get_name()
        self.publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.timer = node.create_timer(period_s, self.publish)

    def publish(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        try:
            level, message, values = self.collect()
        except Exception as err:   # diagnostics must never take the node down; report the failure instead
            level, message, values = ERROR, f'diagnostics failed: {err}', []
        status = DiagnosticStatus(level=bytes([level]), name=f'vidaction_ros: {self.node.get_name()}',
                                  message=message, hardware_id=self.hardware_id,
                                  values=[KeyValue(key=k, value=v) for k, v in values])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.node.get_clock().now().to_msg()
        self.publisher.publish(array)
