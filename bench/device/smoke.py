"""First step on the GPU machine (bench/device/run.sh): the installed package is the one imported, its
messages load, an Action makes a DDS round trip on loopback, and what torch sees. Prints one JSON line;
exit code 1 when the round trip fails (the benches after it would fail too)."""
from __future__ import annotations

import json
import platform
import sys
import time


def round_trip(timeout_s: float = 30.0) -> float:
    """Seconds until a published Action came back to a subscriber of another node (discovery included)."""
    import rclpy
    from vidaction_ros import qos
    from vidaction_ros.msg import Action
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        talker = rclpy.create_node('device_smoke_talker', context=context)
        listener = rclpy.create_node('device_smoke_listener', context=context)
        got = []
        listener.create_subscription(Action, 'device_smoke', got.append, qos.ACTION)
        publisher = talker.create_publisher(Action, 'device_smoke', qos.ACTION)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(listener)
        started = time.monotonic()
        while not got and time.monotonic() - started < timeout_s:
            msg = Action(action='STOP', action_code=Action.ACTION_STOP)
            publisher.publish(msg)
            executor.spin_once(timeout_sec=0.1)
        if not got:
            raise RuntimeError(f'no Action came back within {timeout_s} s')
        return time.monotonic() - started
    finally:
        rclpy.try_shutdown(context=context)


def main() -> int:
    import vidaction_ros
    report = {'python': platform.python_version(), 'vidaction_ros': vidaction_ros.__file__}
    try:
        import torch
        report['torch'] = torch.__version__
        report['cuda'] = torch.cuda.is_available()
        if report['cuda']:
            report['gpu'] = torch.cuda.get_device_name(0)
    except ImportError:
        report['torch'] = None
    try:
        report['action_round_trip_s'] = round(round_trip(), 3)
        ok = True
    except Exception as err:   # noqa: BLE001 - reported, and the exit code says it
        report['error'] = f'{type(err).__name__}: {err}'
        ok = False
    print(json.dumps(report), flush=True)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
