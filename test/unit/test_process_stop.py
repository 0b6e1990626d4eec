"""The process stop (nodes/process_stop.py) with real signals sent to this process: the first signal during
start-up interrupts it, later ones only set the event, and the kernel's parent-death signal is armed."""
import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

from vidaction_ros.nodes import process_stop
from vidaction_ros.nodes.process_stop import ProcessStop, StartupInterrupted


@pytest.fixture
def handlers():
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])


def test_first_signal_interrupts_startup_then_signals_only_set_the_event(handlers):
    stop = ProcessStop().install(stop_with_parent=False)
    with pytest.raises(StartupInterrupted, match='SIGINT'):
        os.kill(os.getpid(), signal.SIGINT)
        signal.sigtimedwait([], 0)      # a bytecode boundary for the handler (it runs in the main thread)
    assert stop.requested.is_set() and stop.reason == 'SIGINT'
    os.kill(os.getpid(), signal.SIGINT)     # launch's second SIGINT: absorbed
    os.kill(os.getpid(), signal.SIGTERM)    # and its SIGTERM
    assert stop.signals == 3 and stop.reason == 'SIGINT'


def test_after_started_a_signal_sets_the_event_without_raising(handlers):
    stop = ProcessStop().install(stop_with_parent=False)
    stop.started()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested.wait(5.0) and stop.reason == 'SIGTERM'


def test_request_stop_without_an_installed_stop_says_so(monkeypatch):
    monkeypatch.setattr(process_stop, '_current', None)
    assert process_stop.request_stop('end of file') is False


def test_a_child_gets_sigterm_when_its_parent_dies():
    # parent -> child; the child arms the parent-death signal and reports on the pipe it inherited from the
    # parent (this test's stdout pipe): "ready", then "SIGTERM" once the parent is SIGKILLed.
    child_code = textwrap.dedent("""
        import signal, sys
        from vidaction_ros.nodes.process_stop import die_with_parent
        signal.signal(signal.SIGTERM, lambda *_: (print('SIGTERM', flush=True), sys.exit(0)))
        assert die_with_parent()
        print('ready', flush=True)
        signal.pause()
    """)
    parent_code = textwrap.dedent(f"""
        import signal, subprocess, sys
        subprocess.Popen([sys.executable, '-c', {child_code!r}])
        signal.pause()
    """)
    parent = subprocess.Popen([sys.executable, '-c', parent_code], stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(parent.stdout, 60) == 'ready', 'the child never armed its parent-death signal'
        parent.kill()
        parent.wait()
        assert read_line(parent.stdout, 30) == 'SIGTERM', 'the child kept running after its parent died'
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()


def read_line(stream, timeout: float) -> str:
    """The next line of a pipe, waiting at most `timeout` s for it ('' when none came)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().strip() if ready else ''
