"""Shared node process plumbing: init, spin each node on its own executor, stop in order (see process_stop)."""
from __future__ import annotations

import atexit
import os
import sys
import threading

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from . import process_stop
from .process_stop import ProcessStop, StartupInterrupted

# What a node raises at construction or configure for a bad parameter, policy file, model or source.
STARTUP_ERRORS = (ValueError, RuntimeError, OSError)


def init_ros(args=None, stop_with_parent: bool = True) -> ProcessStop:
    """Take the stop signals (see process_stop), then rclpy.init without rclpy's own signal handling."""
    stop = process_stop.install(stop_with_parent)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    # Something that shuts the context down directly (a test, a library) still ends the wait.
    rclpy.get_default_context().on_shutdown(lambda: stop.request('ROS shutdown'))
    return stop


def run_nodes(factories, args=None, bring_up_here: bool = False) -> int:
    """Create the nodes (in order) and spin each on its own executor until a stop. Returns an exit code.

    bring_up_here: configure and activate the nodes with autostart:=false here, downstream first (composed
    mode). Otherwise such nodes wait to be brought up from outside (lifecycle_manager, ros2 lifecycle)."""
    stop = init_ros(args)
    log = rclpy.logging.get_logger('vidaction_ros')
    nodes, executors = [], []
    try:
        try:
            for factory in factories:
                nodes.append(factory())
            # Bring-up: nodes with autostart configured and activated themselves; the others are brought up
            # here when asked (composed mode), downstream first. A node that failed to come up ends the
            # process (the reason is already logged): a half-running pipeline must not look healthy.
            from .lifecycle import ManagedNode, bring_up
            failed = []
            if bring_up_here:
                failed = bring_up([n for n in nodes if isinstance(n, ManagedNode) and not n.p['autostart']])
            failed += [n.get_name() for n in nodes
                       if isinstance(n, ManagedNode) and n.p['autostart'] and not n.active]
            if failed:
                log.fatal(f'startup failed: {failed} did not come up')
                return 2
            executors = spin_each_node(nodes)
            stop.started()
        except StartupInterrupted:
            log.info(f'stopping during start-up ({stop.reason})')
            return 0
        except STARTUP_ERRORS as err:
            # Bad configuration (parameter, policy file, missing model, unopenable source): fail at
            # startup with the reason, naming the field, instead of running half-configured.
            log.fatal(f'startup failed: {err}')
            return 2
        stop.requested.wait()
        # Named after the node (a node process) or the pipeline (composed): one line per process.
        name = nodes[0].get_name() if len(nodes) == 1 else 'vidaction_pipeline'
        rclpy.logging.get_logger(name).info(f'stopping ({stop.reason})')
        return 0
    finally:
        release(stop, executors, nodes)


def release(stop: ProcessStop, executors, nodes) -> None:
    """The ordered end of every vidaction process: from here a signal only sets the event; out of spin, then
    each node deactivated, released and destroyed on a live context, then ROS shut down."""
    stop.started()
    stop_executors(executors)
    close_nodes(nodes)
    rclpy.try_shutdown()


def close_nodes(nodes) -> None:
    """Deactivate and release each node (the policy's failsafe goes out here, on a live context), then
    destroy it; downstream first, in the reverse of creation order."""
    for node in reversed(nodes):
        close = getattr(node, 'close', None)
        try:
            if close:
                close()
        except Exception as err:  # noqa: BLE001 - one node's failed release must not keep the others' shm
            rclpy.logging.get_logger('vidaction_ros').error(f'{node.get_name()}: release failed: {err}')
        node.destroy_node()


def stop_executors(executors, timeout_s: float = 5.0) -> None:
    """Stop spinning before nodes are destroyed and the process exits: a thread still inside rcl at teardown
    aborts the process ("terminate called without an active exception"). A callback still running after
    timeout_s (a model load) is left behind: the process ends with os._exit, see exit_process."""
    for executor in executors:
        executor.shutdown(timeout_sec=timeout_s)
    for executor in executors:
        executor.spin_thread.join(timeout_s)


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
        executor.spin_thread = threading.Thread(target=_spin_quietly, args=(executor,),
                                                name=f'spin-{node.get_name()}', daemon=True)
        executor.spin_thread.start()
        executors.append(executor)
    return executors


def _spin_quietly(executor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass   # the context was shut down (Ctrl-C, SIGTERM, end of file): the normal way out
    except RCLError:
        # Shut down between two waits: rclpy raises while building the next wait set on the dead context.
        if executor.context.ok():
            raise
    except InvalidHandle:
        # Jazzy's Executor.shutdown never waits for running work (its wait sits under `if not _is_shutdown`
        # right after setting it), so it can destroy the guard condition a callback's handler is about to
        # trigger. Seen once in CI at stop; harmless then, a bug otherwise.
        if not executor._is_shutdown:
            raise


def exit_process(code: int) -> None:
    """End a node process once run_nodes has released everything (nodes destroyed, rings unlinked, context
    shut down). Measured: letting the interpreter tear down lifecycle nodes' C++ handles aborted the process
    ("terminate called without an active exception", exit -6) on every SIGINT, so a clean stop looked like a
    crash to launch and systemd. Nothing is left to finalise, so end here with the real exit code."""
    # os._exit skips atexit: run its handlers first (iox_frames drops its iceoryx2 node there, so its files go).
    try:
        atexit._run_exitfuncs()
    except Exception:  # noqa: BLE001 - a failing handler must not change how the process ends
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main_for(node_class) -> int:
    exit_process(run_nodes([node_class], args=sys.argv))
