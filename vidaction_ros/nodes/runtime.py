"""Shared node process plumbing: init, spin on a multi-threaded executor, clean shutdown on SIGINT/SIGTERM."""
from __future__ import annotations

import signal
import sys

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor



def run_nodes(factories, args=None, threads: int = 4) -> int:
    """Create the nodes (in order) and spin them on one executor until shutdown. Returns an exit code."""
    rclpy.init(args=args)
    # SIGTERM (ros2 launch, systemd, a test harness) shuts down as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    nodes = []
    code = 0
    try:
        try:
            for factory in factories:
                nodes.append(factory())
        except (ValueError, RuntimeError, OSError) as err:
            # Bad configuration (parameter, policy file, missing model, unopenable source): fail at
            # startup with the reason, naming the field, instead of running half-configured.
            rclpy.logging.get_logger('vidaction_ros').fatal(f'startup failed: {err}')
            return 2
        executor = MultiThreadedExecutor(num_threads=threads)
        for node in nodes:
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in reversed(nodes):
            close = getattr(node, 'close', None)
            if close:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


def main_for(node_class) -> int:
    return run_nodes([node_class], args=sys.argv)
