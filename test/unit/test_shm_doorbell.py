"""The shared-memory ring's doorbell (vidaction_ros.transport.shm_doorbell): real Unix datagram sockets, real reader
processes, real SIGKILL / SIGSTOP. No ROS."""
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vidaction_ros.transport import shm_doorbell
from vidaction_ros.transport.shm_doorbell import (KIND_FRAME, KIND_REGISTER, STUCK_AFTER, DoorbellReader,
                                        DoorbellUnavailable, DoorbellWriter, pack, unpack)


def receive_all(reader: DoorbellReader, count: int, timeout: float = 30.0) -> list:
    """The next `count` frame datagrams (bounded wait: datagrams between processes take a moment)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        ring = reader.receive()
        if ring is None:
            time.sleep(0.001)
            continue
        got.append(ring)
    return got


def registered(writer: DoorbellWriter, count: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        writer.poll_registrations()                                   # drains pending registrations
        if len(writer.readers) >= count:
            return True
        time.sleep(0.005)
    return False


def test_datagram_round_trips_and_foreign_data_is_ignored():
    data = pack(KIND_FRAME, 'vidaction_cam_1_0', 3, 12, 11, 1_700_000_000_123, b'payload', sent_ns=42)
    assert unpack(data) == (KIND_FRAME, 'vidaction_cam_1_0', 3, 12, 11, 1_700_000_000_123, 42, b'payload')
    assert unpack(b'hello') is None
    assert unpack(b'X' * 8 + data[8:]) is None                 # wrong magic
    assert unpack(data[:shm_doorbell.HEADER_BYTES + 3]) is None    # store name cut short


def test_frames_arrive_in_order_with_their_payloads():
    with DoorbellWriter() as writer, DoorbellReader() as reader:
        assert writer.ring('s', 0, 1, 0, 0) == 0                # nobody registered: nobody rung
        assert reader.register(writer.path)
        assert registered(writer, 1)
        for k in range(8):
            assert writer.ring('store', k % 3, k + 1, k, 1000 + k, f'frame {k}'.encode()) == 1
        got = receive_all(reader, 8)
        assert [(r.store, r.slot, r.generation, r.sequence, r.stamp_ns, r.payload) for r in got] == [
            ('store', k % 3, k + 1, k, 1000 + k, f'frame {k}'.encode()) for k in range(8)]
        assert all(r.sent_ns <= r.received_ns for r in got)
        assert reader.receive() is None                        # non-blocking when empty
        assert writer.stats() == {'readers': 1, 'sent': 8, 'dropped': 0, 'unregistered': 0}
        reader.unregister(writer.path)
        assert writer.ring('store', 0, 9, 8, 0) == 0 and writer.readers == {}


def test_a_reader_that_closed_is_forgotten_by_its_writer():
    with DoorbellWriter() as writer:
        gone = DoorbellReader()
        stays = DoorbellReader()
        for reader in (gone, stays):
            reader.register(writer.path)
        assert registered(writer, 2)
        gone.close()                                           # says UNREGISTER, removes its socket
        assert not os.path.exists(gone.path)
        assert writer.ring('s', 0, 1, 0, 0) == 1 and list(writer.readers) == [stays.path]
        assert [r.generation for r in receive_all(stays, 1)] == [1]
        stays.close()


READER = r'''
import sys, time
from vidaction_ros.transport.shm_doorbell import DoorbellReader
reader = DoorbellReader()
print(reader.path, flush=True)
assert reader.register(sys.argv[1])
while True:
    time.sleep(1)
'''


def reader_process(writer_path: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, '-c', READER, writer_path], cwd=tempfile.gettempdir(),
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_a_killed_reader_never_blocks_the_writer_and_is_counted():
    with DoorbellWriter() as writer, DoorbellReader() as alive:
        proc, path = reader_process(writer.path)
        try:
            alive.register(writer.path)
            assert registered(writer, 2) and path in writer.readers
            proc.kill()                                        # SIGKILL: no UNREGISTER, its socket file stays
            proc.wait(60)
            assert os.path.exists(path)
            delivered = [writer.ring('s', k % 4, k + 1, k, 0) for k in range(5)]
            assert delivered == [1] * 5                        # the live reader got every one
            assert path not in writer.readers and writer.unregistered == 1 and writer.dropped == 1
            assert [r.generation for r in receive_all(alive, 5)] == [1, 2, 3, 4, 5]
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(60)


def test_a_stuck_reader_loses_frames_counted_and_is_dropped_without_blocking():
    """A reader that is alive but never reads (SIGSTOPped): its queue fills, the writer keeps going (every
    send non-blocking), counts each frame it missed, and after STUCK_AFTER misses in a row forgets it."""
    with DoorbellWriter() as writer, DoorbellReader() as alive:
        proc, path = reader_process(writer.path)
        try:
            alive.register(writer.path)
            assert registered(writer, 2)
            os.kill(proc.pid, signal.SIGSTOP)
            frames = STUCK_AFTER + 200
            for k in range(frames):
                writer.ring('s', 0, k + 1, k, 0)
                if k % 5 == 4:
                    assert len(receive_all(alive, 5)) == 5     # the healthy reader keeps up
            assert path not in writer.readers and writer.unregistered == 1
            assert STUCK_AFTER <= writer.dropped < frames      # its queue took some, then it missed, counted
            assert list(writer.readers) == [alive.path]
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(60)


def test_sockets_and_their_directory_are_owner_only():
    with DoorbellWriter() as writer, DoorbellReader() as reader:
        directory = os.path.dirname(writer.path)
        assert directory == os.path.dirname(reader.path) == shm_doorbell.directory()
        assert os.path.basename(directory).startswith(f'{shm_doorbell.DIR_PREFIX}')
        st = os.lstat(directory)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
        for path in (writer.path, reader.path):
            st = os.lstat(path)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    assert not os.path.exists(writer.path) and not os.path.exists(reader.path)


def test_no_usable_directory_is_a_clear_doorbell_unavailable(monkeypatch, tmp_path):
    not_a_dir = tmp_path / 'file'
    not_a_dir.write_text('')
    monkeypatch.setenv('VIDACTION_DOORBELL_DIR', str(not_a_dir))
    with pytest.raises(DoorbellUnavailable, match='no directory for doorbell sockets'):
        shm_doorbell._ProcessDir().get()
    monkeypatch.setattr(shm_doorbell, '_DIR', shm_doorbell._ProcessDir())
    with pytest.raises(DoorbellUnavailable):
        DoorbellWriter()
    with pytest.raises(DoorbellUnavailable):
        DoorbellReader()


@pytest.fixture
def short_dir():
    """A short base directory (pytest's tmp_path can exceed the 107 bytes a socket path may have)."""
    path = tempfile.mkdtemp(prefix='vb', dir='/tmp')
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_directories_of_dead_processes_are_swept(monkeypatch, short_dir):
    tmp_path = short_dir
    monkeypatch.setenv('VIDACTION_DOORBELL_DIR', str(tmp_path))
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait(60)                                              # a PID that is certainly dead now
    namespace = shm_doorbell._pid_namespace()
    dead = tmp_path / f'{shm_doorbell.DIR_PREFIX}{namespace}-{proc.pid}-abc'
    live = tmp_path / f'{shm_doorbell.DIR_PREFIX}{namespace}-1-abc'     # PID 1 always runs
    other_ns = tmp_path / f'{shm_doorbell.DIR_PREFIX}{namespace + 1}-{proc.pid}-abc'
    for path in (dead, live, other_ns):
        path.mkdir(mode=0o700)
        (path / 'w0.sock').write_text('')
    mine = shm_doorbell._ProcessDir()
    created = mine.get()
    assert os.path.dirname(created) == str(tmp_path) and f'-{os.getpid()}-' in os.path.basename(created)
    assert not dead.exists() and live.exists() and other_ns.exists()
    mine.remove()
    assert not os.path.exists(created)


def test_registration_datagrams_are_the_only_thing_a_writer_accepts():
    with DoorbellWriter() as writer, DoorbellReader() as reader:
        reader.sock.sendto(b'garbage', writer.path)
        reader.sock.sendto(pack(KIND_FRAME, 'x'), writer.path)   # not a registration
        assert not writer.poll_registrations()
        reader.sock.sendto(pack(KIND_REGISTER), writer.path)
        assert registered(writer, 1)
