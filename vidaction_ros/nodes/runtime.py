"""Shared node process plumbing: init, spin on a multi-threaded executor, clean shutdown on SIGINT/SIGTERM."""
from __future__ import annotations

import signal
import sys
import threading

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def run_nodes(factories, args=None) -> int:
    """Create the nodes (in order) and spin each on its own executor until shutdown. Returns an exit code."""
    rclpy.init(args=args)
    # SIGTERM (ros2 launch, systemd, a test harness) shuts down as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    nodes = []
    try:
        try:
            for factory in factories:
                nodes.append(factory())
        except (ValueError, RuntimeError, OSError) as err:
            # Bad configuration (parameter, policy file, missing model, unopenable source): fail at
            # startup with the reason, naming the field, instead of running half-configured.
            rclpy.logging.get_logger('vidaction_ros').fatal(f'startup failed: {err}')
            return 2
        stopped = threading.Event()
        rclpy.get_default_context().on_shutdown(stopped.set)
        executors = spin_each_node(nodes)
        stopped.wait()
        for executor in executors:
            executor.shutdown()
    except KeyboardInterrupt:
        pass
    finally:
        for node in reversed(nodes):
            close = getattr(node, 'close', None)
            if close:
                close()
            node.destroy_node()
        try:
            rclpy.try_shutdown()
        except RCLError:
            pass    # the SIGINT handler shut the context down between try_shutdown's check and its call
    return 0


def spin_each_node(nodes) -> list:
    """One single-threaded executor per node, each on its own daemon thread.

    Measured in the composed pipeline on 2 cores: rclpy's MultiThreadedExecutor over all nodes let the
    memory and policy callbacks wait behind the 70 ms embedder callback (embed->Action p50 66 ms); an executor
    per node lets each node's callback run as soon as its message arrives.
    """
    executors = []
    for node in nodes:
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        threading.Thread(target=_spin_quietly, args=(executor,), name=f'spin-{node.get_name()}',
                         daemon=True).start()
        executors.append(executor)
    return executors


def _spin_quietly(executor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass   # the context was shut down (Ctrl-C, SIGTERM, end of file): the normal way out


def main_for(node_class) -> int:
    return run_nodes([node_class], args=sys.argv)
