"""The listening node: this script's own rclpy node, recording every Action and the newest /diagnostics values."""
from __future__ import annotations

import subprocess
import threading
import time


def _num(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


# -- the listening node --------------------------------------------------------------------------------------
class Monitor:
    """This script's own rclpy node: every Action (arrival time, latency, trigger) and the newest
    /diagnostics values of every vidaction node."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from vidaction_ros import qos
        from vidaction_ros.msg import Action
        self.lock = threading.Lock()
        self.actions: list[tuple[float, float, bool]] = []     # (monotonic arrival, capture_to_decide_ms, failsafe)
        self.diagnostics: dict[str, dict] = {}
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('soak_monitor', context=self.context)
        self.node.create_subscription(Action, 'action', self._on_action, qos.action_reader(False))
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, name='soak-monitor', daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:   # noqa: BLE001 - the context shut down under it at close()
            pass

    def _on_action(self, msg) -> None:
        with self.lock:
            self.actions.append((time.monotonic(), float(msg.capture_to_decide_ms), msg.trigger == 'watchdog'))

    def _on_diagnostics(self, msg) -> None:
        with self.lock:
            for status in msg.status:
                if status.name.startswith('vidaction_ros: '):
                    node = status.name.split(': ', 1)[1]
                    self.diagnostics[node] = {kv.key: _num(kv.value) for kv in status.values}

    def reset(self) -> None:
        with self.lock:
            self.actions.clear()
            self.diagnostics.clear()

    def snapshot(self):
        with self.lock:
            return list(self.actions), {k: dict(v) for k, v in self.diagnostics.items()}

    def wait_first_action(self, proc: subprocess.Popen, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            with self.lock:
                first = next((t for t, _, failsafe in self.actions if not failsafe), None)
            if first is not None:
                return first
            time.sleep(0.2)
        return None

    def close(self) -> None:
        import rclpy
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(5.0)
