"""Shared node process plumbing: init, spin on a multi-threaded executor, clean shutdown on SIGINT/SIGTERM."""
from __future__ import annotations

import os
import signal
import sys
import threading

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def listen_to_sigint() -> None:
    """Take SIGINT back when the parent left it ignored. A process started in the background by a shell
    without job control (nohup, `cmd &` in a script, some CI runners) inherits SIGINT as SIG_IGN; Python and
    rclpy.init then keep it ignored, and `ros2 launch` / a test harness could stop the node only by escalating
    to SIGTERM or SIGKILL. Call before rclpy.init, which installs its own handler on top of this one."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_nodes(factories, args=None, bring_up_here: bool = False) -> int:
    """Create the nodes (in order) and spin each on its own executor until shutdown. Returns an exit code.

    bring_up_here: configure and activate the nodes with autostart:=false here, downstream first (composed
    mode). Otherwise such nodes wait to be brought up from outside (lifecycle_manager, ros2 lifecycle)."""
    listen_to_sigint()
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
        # Bring-up: nodes with autostart configured and activated themselves; the others are brought up
        # here when asked (composed mode), downstream first. A node that failed to come up ends the process
        # (the reason is already logged): a half-running pipeline must not look healthy.
        from .lifecycle import ManagedNode, bring_up
        failed = []
        if bring_up_here:
            failed = bring_up([n for n in nodes if isinstance(n, ManagedNode) and not n.p['autostart']])
        failed += [n.get_name() for n in nodes
                   if isinstance(n, ManagedNode) and n.p['autostart'] and not n.active]
        if failed:
            rclpy.logging.get_logger('vidaction_ros').fatal(f'startup failed: {failed} did not come up')
            return 2
        stopped = threading.Event()
        rclpy.get_default_context().on_shutdown(stopped.set)
        executors = spin_each_node(nodes)
        stopped.wait()
        for executor in executors:
            executor.shutdown()
        for executor in executors:
            # Out of spin before nodes are destroyed and the interpreter exits: a thread still inside rcl
            # at teardown aborts the process ("terminate called without an active exception").
            executor.spin_thread.join(5.0)
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


def exit_process(code: int) -> None:
    """End a node process once run_nodes has released everything (nodes destroyed, rings unlinked, context
    shut down). Measured: letting the interpreter tear down lifecycle nodes' C++ handles aborted the process
    ("terminate called without an active exception", exit -6) on every SIGINT, so a clean stop looked like a
    crash to launch and systemd. Nothing is left to finalise, so end here with the real exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main_for(node_class) -> int:
    exit_process(run_nodes([node_class], args=sys.argv))
