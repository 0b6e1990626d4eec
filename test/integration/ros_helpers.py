"""Helpers for integration tests: real rclpy nodes, real DDS on loopback, child processes in their own
process groups. Waiting is always on events/conditions with generous timeouts, never on sleeps."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class ActionCollector:
    """A subscriber node on its own executor thread that records every Action it receives."""

    def __init__(self, context=None, topic='action', lockstep: bool = False):
        from vidaction_ros import qos
        from vidaction_ros.msg import Action
        self.messages = []
        self.changed = threading.Condition()
        self.node = Node('test_action_collector', context=context)
        # Deep reader history: a test on a loaded machine must not lose an Action to its own lag; reading a
        # lock-step run, also the Actions published before the policy's writer matched this reader.
        self.node.create_subscription(Action, topic, self._on_action, qos.action_reader(lockstep))
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_action(self, msg):
        with self.changed:
            self.messages.append(msg)
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))
            return True

    def decisions_at_shutdown_split(self):
        """(per-frame Actions, failsafes). With the watchdog off (lock-step), the only failsafe a run may
        end with is the one a deactivating policy sends so the controller hears it go silent: it comes after
        every decision, and only when the policy's context is still up at that moment (a race with SIGINT)."""
        with self.changed:
            messages = list(self.messages)
        decided = [a for a in messages if a.trigger != 'watchdog']
        failsafes = [a for a in messages if a.trigger == 'watchdog']
        assert all('deactivated' in a.reason for a in failsafes), [a.reason for a in failsafes]
        if failsafes:
            assert messages.index(failsafes[0]) >= len(decided), 'a failsafe came before the last decision'
        return decided, failsafes

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


def run_until_frame_decided(args: list[str], last_sequence: int, log_path, timeout: float):
    """Start `vidaction_pipeline ARGS`, collect its Actions in a fresh context until frame `last_sequence` is
    decided (or the timeout), stop it with SIGINT. Returns (per-frame Actions, complete, exit code, log)."""
    context = rclpy.Context()
    rclpy.init(context=context)
    collector = ActionCollector(context=context, lockstep='--lockstep' in args)
    proc = start_pipeline(*args, log_path=str(log_path))
    try:
        # Ends early when the pipeline exits (a start-up failure): its log says why, no need to wait it out.
        complete = collector.wait_for(lambda m: any(a.frame_sequence == last_sequence for a in m)
                                      or proc.poll() is not None, timeout=timeout)
        complete = complete and collector.wait_for(lambda m: any(a.frame_sequence == last_sequence for a in m), 0)
        code = stop_group(proc)
    finally:
        if proc.poll() is None:
            stop_group(proc)
        collector.close()
        rclpy.try_shutdown(context=context)
    decided, _ = collector.decisions_at_shutdown_split()
    return decided, complete, code, open(log_path).read()


def start_pipeline(*args: str, log_path: str | None = None) -> subprocess.Popen:
    """`vidaction_pipeline ARGS` as a child process group, run outside the source tree."""
    out = open(log_path, 'w') if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, '-m', 'vidaction_ros.nodes.pipeline', *args], cwd=tempfile.gettempdir(),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError('pipeline did not shut down within the timeout after SIGINT')
    return proc.returncode


def start_node(name, params_file, overrides, log):
    """One graph node as its own process group, the command line `vidaction_pipeline --mode processes` uses."""
    from vidaction_ros import graph
    from vidaction_ros.nodes.pipeline import node_command
    spec = next(s for s in graph.NODES if s.name == name)
    return subprocess.Popen(node_command(spec, params_file, overrides), cwd=tempfile.gettempdir(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))


def stop(proc, sig=signal.SIGINT, timeout=20.0) -> int:
    """Signal a process group, SIGKILL it after `timeout` (no assertion: see stop_group for that); its exit code."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def stamp_s(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def wait_until(predicate, timeout: float, message, interval: float = 0.01) -> None:
    """Wait for a condition nothing notifies of (a graph match, a counter kept by the code under test):
    look at `predicate()` every `interval` s until it holds, AssertionError(message) once `timeout` s have
    passed (message may be a callable, evaluated then, to show the state it failed in). The interval is how
    often to look, never a guess at how long it takes: the wait ends the moment the condition holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on loopback nobody listens on now (a server the test starts, or a camera nobody serves)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    out = subprocess.run(['ps', '-o', 'pid=', '--ppid', str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def child_running(pid: int, module: str) -> int:
    """The child of `pid` running `python -m ...<module>` (e.g. 'embedder_node' of a processes-mode pipeline)."""
    for child in children_of(pid):
        with open(f'/proc/{child}/cmdline') as f:
            if module in f.read():
                return child
    raise AssertionError(f'no child of {pid} runs {module}')


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split(') ')[-1][0] != 'Z'
    except FileNotFoundError:
        return False
