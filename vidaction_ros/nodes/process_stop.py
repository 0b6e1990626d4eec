"""How a vidaction process stops: once, in order, whatever asked for it.

`ros2 launch` stops a node with SIGINT to its process group, a second SIGINT to what still runs, then SIGTERM
after its timeout; systemd and most supervisors send SIGTERM; a launcher that is itself killed leaves its
children with no parent. All of these, and the end of a replayed file, set one event here. The process's
main thread waits on it and then stops in order while ROS is still up: the policy sends its deactivation
failsafe, nodes release shared memory and CUDA, and only then is the ROS context shut down, so nothing
publishes on a dead context and no KeyboardInterrupt lands in the middle of a release.

rclpy's own SIGINT handling is switched off (rclpy.init(signal_handler_options=NO)) because it shuts the
context down from its signal thread at any moment and then hands SIGINT back to Python's default handler,
so launch's second SIGINT raised KeyboardInterrupt wherever the main thread happened to be (exit code -2).

Pure: no ROS import, so the tools and the nodes share it.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading

PR_SET_PDEATHSIG = 1            # <linux/prctl.h>
STOP_WITH_PARENT_ENV = 'VIDACTION_STOP_WITH_PARENT'   # '0' / 'false': keep running when the parent dies


class StartupInterrupted(Exception):
    """A stop signal arrived while the process was still starting (loading a model, opening a camera)."""


class ProcessStop:
    """SIGINT, SIGTERM and parent death -> `requested` (an Event) and `reason`; the first signal counts.

    While `starting`, the first signal also raises StartupInterrupted in the main thread, so a stop during a
    long model load does not wait for it to finish (launch escalates to SIGKILL after 10 s). Afterwards a
    signal only sets the event: the main thread notices it in its wait and stops in order, and any further
    signal (launch's second SIGINT, its SIGTERM) is absorbed.
    """

    def __init__(self):
        self.requested = threading.Event()
        self.reason = ''
        self.starting = True
        self.signals = 0

    def install(self, stop_with_parent: bool = True) -> 'ProcessStop':
        """Take SIGINT and SIGTERM (main thread only). Also replaces a SIG_IGN that a background start (nohup,
        `cmd &` in a script without job control) leaves on SIGINT, which would make a node deaf to Ctrl-C."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        if stop_with_parent and os.environ.get(STOP_WITH_PARENT_ENV, '1').lower() not in ('0', 'false', 'no'):
            die_with_parent()
        return self

    def request(self, reason: str) -> None:
        """Ask for a stop from inside the process (end of a replayed file)."""
        if not self.requested.is_set():
            self.reason = reason
        self.requested.set()

    def started(self) -> None:
        """From here on a signal only sets the event (the main thread is waiting on it)."""
        self.starting = False

    def _on_signal(self, signum, _frame) -> None:
        self.signals += 1
        first = not self.requested.is_set()
        self.request(signal.Signals(signum).name)
        if first and self.starting:
            self.starting = False          # raised once: the release that follows must not be interrupted
            raise StartupInterrupted(self.reason)


_current: ProcessStop | None = None


def install(stop_with_parent: bool = True) -> ProcessStop:
    """The process's stop (one per process: the signal handlers are process-wide)."""
    global _current
    _current = ProcessStop().install(stop_with_parent)
    return _current


def request_stop(reason: str) -> bool:
    """Stop the process in order, as a signal would. False when no ProcessStop is installed (a node made by a
    test or another program), where the caller falls back to its own way out."""
    if _current is None:
        return False
    _current.request(reason)
    return True


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send `sig` to this process when its parent dies (Linux PR_SET_PDEATHSIG), so a
    launcher killed with SIGKILL never leaves its nodes running. Returns False where it is unavailable."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:   # the parent died before the request took effect
        os.kill(os.getpid(), sig)
    return True
