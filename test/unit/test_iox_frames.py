"""The iceoryx2 frame path (transport/iox_frames.py) with the real library, across real processes.

Expected pixels come from first principles: the writer fills frame n with bytes drawn from a generator
seeded with n, so a reader can recompute what frame n must hold and a torn or overwritten frame shows.
"""
import ctypes
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import zlib

import numpy as np
import pytest

iox_frames = pytest.importorskip('vidaction_ros.transport.iox_frames')
if not iox_frames.available():
    pytest.skip('iceoryx2 is not installed', allow_module_level=True)

H, W = 120, 160
DEADLINE_S = 60.0


def expected_crc(sequence: int) -> int:
    return zlib.crc32(np.random.default_rng(sequence).integers(0, 256, (H, W, 3), np.uint8).tobytes())


WRITER = textwrap.dedent('''
    import sys, time
    import numpy as np
    from vidaction_ros.transport import iox_frames as f
    name, frames, period = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    pub = f.IoxFramePublisher(name, {h} * {w} * 3)
    print('ready', flush=True)
    sys.stdin.readline()                 # the test says go once its reader is connected
    for n in range(frames):
        loan = pub.loan({h}, {w})
        loan.array[:] = np.random.default_rng(n).integers(0, 256, ({h}, {w}, 3), np.uint8)
        pub.send(loan, sequence=n, stamp_ns=time.time_ns(), frame_id='cam')
        if period:
            time.sleep(period)
    print('done', flush=True)
    sys.stdin.readline()
''').format(h=H, w=W)


def start_writer(name, frames, period=0.0):
    proc = subprocess.Popen([sys.executable, '-c', WRITER, name, str(frames), str(period)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    assert proc.stdout.readline().strip() == 'ready'
    return proc


def fresh_name():
    return iox_frames.service_name(f'test/{uuid.uuid4().hex[:12]}', 'unit')


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_a_slow_reader_sees_only_whole_frames_newest_first_and_counts_what_it_missed():
    name = fresh_name()
    reader = iox_frames.IoxFrameReader(name)
    writer = start_writer(name, 300)            # as fast as it can: far faster than the reader
    try:
        writer.stdin.write('go\n')
        writer.stdin.flush()
        taken, deadline = [], time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if not reader.wait(0.5):
                if writer.poll() is not None or taken and taken[-1] == 299:
                    break
                continue
            frame = reader.take_newest()
            if frame is None:
                continue
            time.sleep(0.005)                   # hold it while the writer races on
            crc = zlib.crc32(frame.array.tobytes())     # checked at the end of the hold
            assert crc == expected_crc(frame.sequence), f'frame {frame.sequence} changed while held'
            assert frame.frame_id == 'cam' and frame.array.shape == (H, W, 3)
            taken.append(frame.sequence)
            frame.release()
            if frame.sequence == 299:
                break
    finally:
        writer.stdin.write('exit\n')
        writer.stdin.flush()
        stop(writer)
    assert taken and taken[-1] == 299, 'the newest frame was never delivered'
    assert taken == sorted(set(taken)), 'frames out of order or repeated'
    assert len(taken) < 300, 'a reader 5 ms per frame kept up with a free-running writer?'
    # Every frame from the first one the reader received (a loaded machine may let the writer overwrite the
    # first ones before the reader looks: those are before its stream began) is taken or counted as dropped.
    assert reader.first_sequence is not None and reader.first_sequence <= taken[0]
    assert reader.counts['dropped'] == 300 - reader.first_sequence - len(taken)
    reader.close()


def test_a_sigkilled_camera_leaves_nothing_that_blocks_the_next_one():
    name = fresh_name()
    first = start_writer(name, 1000, period=0.01)
    first.stdin.write('go\n')
    first.stdin.flush()
    reader = iox_frames.IoxFrameReader(name)
    deadline = time.monotonic() + DEADLINE_S
    while reader.take_newest() is None and time.monotonic() < deadline:
        reader.wait(0.2)
    os.kill(first.pid, signal.SIGKILL)          # a loaned sample, a publisher and a node left behind
    first.wait(10)
    # The service allows one publisher: the next camera only starts if the dead one was cleaned up.
    second = start_writer(name, 5)
    try:
        second.stdin.write('go\n')
        second.stdin.flush()
        sequences = []
        while 4 not in sequences and time.monotonic() < deadline:
            reader.wait(0.2)
            while (frame := reader.take_newest()) is not None:
                assert zlib.crc32(frame.array.tobytes()) == expected_crc(frame.sequence)
                sequences.append(frame.sequence)
                frame.release()
        assert 4 in sequences, 'the restarted camera\'s frames never arrived'
    finally:
        second.stdin.write('exit\n')
        second.stdin.flush()
        stop(second)
        reader.close()


READER = textwrap.dedent('''
    import sys, time
    from vidaction_ros.transport import iox_frames as f
    reader = f.IoxFrameReader(sys.argv[1], keep=f.OBSERVER_KEEP)
    print('ready', flush=True)
    while True:                                   # keeps every frame it can borrowed, until killed
        reader.wait(0.1)
        reader.find(-1)
        if len(reader.held) == f.OBSERVER_KEEP:
            print('holding', flush=True)
''')


def test_a_sigkilled_consumer_holding_frames_does_not_starve_the_camera():
    name = fresh_name()
    writer = iox_frames.IoxFramePublisher(name, H * W * 3)
    hog = subprocess.Popen([sys.executable, '-c', READER, name], stdout=subprocess.PIPE, text=True,
                           cwd=tempfile.gettempdir())
    try:
        assert hog.stdout.readline().strip() == 'ready'
        n, deadline = 0, time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            loan = writer.loan(H, W)
            loan.array[:] = 1
            writer.send(loan, sequence=n)
            n += 1
            if n >= 8:
                break
        assert hog.stdout.readline().strip() == 'holding'
        os.kill(hog.pid, signal.SIGKILL)
        hog.wait(10)
        reader = iox_frames.IoxFrameReader(name)       # its creation reclaims the dead reader's samples
        for _ in range(200):                           # far more than the pool: samples come back
            loan = writer.loan(H, W)
            loan.array[:] = n % 256
            writer.send(loan, sequence=n)
            frame = reader.take_newest()
            assert frame is not None and frame.sequence == n and int(frame.array[0, 0, 0]) == n % 256
            frame.release()
            n += 1
        assert writer.subscribers() == 1
        reader.close()
    finally:
        stop(hog)
        writer.close()


def test_frame_memory_is_readable_by_its_owner_only():
    before = set(os.listdir('/dev/shm'))
    name = fresh_name()
    writer = iox_frames.IoxFramePublisher(name, H * W * 3)
    reader = iox_frames.IoxFrameReader(name)
    loan = writer.loan(H, W)
    loan.array[:] = 7
    writer.send(loan, sequence=0)
    frame = reader.take_newest()
    # iceoryx2's `*.global_mgmt` (16 bytes, world-writable by design: one counter every iceoryx2 user of the
    # machine shares) holds no frame data; everything this service creates must be private.
    created = [entry for entry in set(os.listdir('/dev/shm')) - before
               if entry.startswith('iox2_') and not entry.endswith('.global_mgmt')]
    try:
        assert any(entry.endswith('.data') for entry in created), f'no frame segment among {created}'
        for entry in created:
            mode = stat.S_IMODE(os.stat(os.path.join('/dev/shm', entry)).st_mode)
            assert mode & 0o077 == 0, f'/dev/shm/{entry} is mode {mode:o}: other users could read frames'
    finally:
        frame.release()
        reader.close()
        writer.close()


class OtherHeader(ctypes.Structure):
    _fields_ = [('sequence', ctypes.c_uint32)]


def test_a_peer_with_another_header_layout_gets_one_clear_error():
    name = fresh_name()
    import iceoryx2 as iox
    node = iox_frames._node()
    other = (node.service_builder(iox.ServiceName.new(name)).publish_subscribe(iox.Slice[ctypes.c_uint8])
             .user_header(OtherHeader).open_or_create())
    with pytest.raises(iox_frames.IncompatibleFrames) as err:
        iox_frames.IoxFrameReader(name)
    assert name in str(err.value) and 'another layout' in str(err.value)
    del other


def test_a_sample_whose_header_disagrees_with_its_size_is_refused_and_counted():
    name = fresh_name()
    writer = iox_frames.IoxFramePublisher(name, H * W * 3)
    reader = iox_frames.IoxFrameReader(name)
    loan = writer.loan(H, W)
    writer.send(loan, sequence=0, height=H + 1)          # the header lies about the shape
    assert reader.take_newest() is None
    assert reader.counts['malformed'] == 1
    loan = writer.loan(H, W)
    loan.array[:] = 3
    writer.send(loan, sequence=1)
    frame = reader.take_newest()
    assert frame.sequence == 1 and frame.array.shape == (H, W, 3)
    frame.release()
    reader.close()
    writer.close()


def test_unknown_encodings_are_refused_at_the_loan():
    writer = iox_frames.IoxFramePublisher(fresh_name(), H * W * 3)
    with pytest.raises(ValueError, match='yuv422'):
        writer.loan(H, W, 'yuv422')
    writer.close()


def test_a_service_at_its_subscriber_limit_is_one_clear_error_not_an_iceoryx2_exception():
    # A consumer must be able to fall back (FrameSubscription keeps DDS and the ring) on any iceoryx2
    # failure, which it can only if every failure is an IoxUnavailable naming what could not be made.
    name = fresh_name()
    readers = [iox_frames.IoxFrameReader(name) for _ in range(iox_frames.MAX_SUBSCRIBERS)]
    try:
        with pytest.raises(iox_frames.IoxUnavailable) as err:
            iox_frames.IoxFrameReader(name)
        assert 'frame subscriber' in str(err.value) and name in str(err.value)
        assert str(err.value).count('\n') == 0
    finally:
        for reader in readers:
            reader.close()
    iox_frames.IoxFrameReader(name).close()          # the slots are free again once the readers closed
