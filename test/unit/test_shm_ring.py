"""The shared-memory frame ring (vidaction_ros.transport.shm_ring): real /dev/shm segments, real writer processes,
real SIGKILL. No ROS."""
import os
import queue
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from vidaction_ros.transport import cuda_ipc
from vidaction_ros.transport.frame_store import FrameLost
from vidaction_ros.transport.shm_ring import (LAYOUT_VERSION, SHM_DIR, RingFormatError, RingInUse, ShmRingReader,
                                    ShmRingWriter, WriterGone, reclaim_stale, ring_name, segment_path)

# A writer process: frames cycle through 8 solid values so that any mix of two frames is visible.
WRITER = r'''
import os
import signal
import sys
# Stopped with SIGINT: take it back if this process was started with it ignored (background CI shells).
signal.signal(signal.SIGINT, signal.default_int_handler)
parent = os.getppid()                     # and it stops by itself once the test process is gone
import numpy as np
from vidaction_ros.transport.shm_ring import ShmRingWriter
name, slots, h, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
frames = [np.full((h, w, 3), (k * 31 + 7) % 256, np.uint8) for k in range(8)]
with ShmRingWriter(name, slots=slots, slot_bytes=h * w * 3) as ring:
    ring.write(frames[1])
    print('ready', flush=True)
    try:
        while ring.generation % 1024 or os.getppid() == parent:   # hammer: no pacing at all
            ring.write(frames[(ring.generation + 1) % 8])
    except KeyboardInterrupt:
        pass
try:
    print('closed', flush=True)
except BrokenPipeError:
    pass                                  # the test process is gone
'''


def value_of(generation: int) -> int:
    return ((generation % 8) * 31 + 7) % 256


@pytest.fixture
def name():
    """A unique ring name; whatever a test leaves under it is removed afterwards."""
    ring = f'vidaction_test_{os.getpid()}_{secrets.token_hex(3)}'
    yield ring
    for entry in os.listdir(SHM_DIR):
        if ring in entry:
            os.unlink(os.path.join(SHM_DIR, entry))


class WriterProcess:
    def __init__(self, ring: str, slots: int = 2, h: int = 480, w: int = 640):
        self.proc = subprocess.Popen([sys.executable, '-c', WRITER, ring, str(slots), str(h), str(w)],
                                     cwd=tempfile.gettempdir(), stdout=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, line: str, timeout: float = 60.0):
        try:
            got = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f'writer process did not say {line!r} within {timeout} s') from None
        assert got == line

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()                # never left spinning a core
                raise AssertionError('writer process did not stop on SIGINT (killed)') from None

    def kill(self):
        self.proc.kill()
        self.proc.wait(60)


def frame(h=48, w=64, c=3, seed=0):
    shape = (h, w) if c == 1 else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# -- round trips --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('shape', [(48, 64, 3), (480, 640, 3), (7, 5, 4), (9, 11)])
def test_round_trip_is_exact(name, shape):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    with ShmRingWriter(name, slots=3, slot_bytes=480 * 640 * 3) as writer, ShmRingReader(name) as reader:
        slot, generation = writer.write(image)
        got = reader.read(slot, generation)
        assert got.shape == image.shape and np.array_equal(got, image)
        assert got.flags.writeable and not np.shares_memory(got, image)   # a private copy
        out = np.empty_like(image)
        assert reader.read(slot, generation, out=out) is out and np.array_equal(out, image)


def test_non_contiguous_frames_are_written_correctly(name):
    image = frame(60, 80)[::2, ::2]               # a strided view
    with ShmRingWriter(name, slots=2, slot_bytes=image.nbytes) as writer, ShmRingReader(name) as reader:
        assert np.array_equal(reader.read(*writer.write(image)), image)


def test_generations_count_frames_and_latest_points_at_the_newest(name):
    with ShmRingWriter(name, slots=3, slot_bytes=100) as writer, ShmRingReader(name) as reader:
        assert reader.latest() == (0, 0)
        refs = [writer.write(np.full((10, 10), i, np.uint8)) for i in range(5)]
        assert [g for _, g in refs] == [1, 2, 3, 4, 5]
        assert [s for s, _ in refs] == [0, 1, 2, 0, 1]
        assert reader.latest() == refs[-1]
        assert (reader.read(*reader.latest()) == 4).all()


# -- lost frames are reported, never substituted or torn ------------------------------------------------
def test_generation_mismatch_after_wrap_raises_frame_lost(name):
    with ShmRingWriter(name, slots=2, slot_bytes=100) as writer, ShmRingReader(name) as reader:
        slot, generation = writer.write(np.zeros((10, 10), np.uint8))
        writer.write(np.ones((10, 10), np.uint8))
        writer.write(np.full((10, 10), 2, np.uint8))           # wraps onto the first slot
        with pytest.raises(FrameLost, match=f'generation {generation} was overwritten'):
            reader.read(slot, generation)
        with pytest.raises(FrameLost, match='out of range'):
            reader.read(5, generation)
        assert reader.lost == 2


def test_a_slot_being_written_is_refused(name):
    """The writer's first half (seq odd), as a writer killed mid-copy leaves it: readers back off."""
    with ShmRingWriter(name, slots=2, slot_bytes=100) as writer, ShmRingReader(name) as reader:
        slot, generation, dst = writer._begin(np.zeros((10, 10), np.uint8))
        dst[:] = 9
        with pytest.raises(FrameLost, match='being overwritten'):
            reader.read(slot, generation)
        writer._commit(slot)
        assert (reader.read(slot, generation) == 9).all()


def test_a_view_overwritten_during_use_is_reported_at_the_end(name):
    with ShmRingWriter(name, slots=2, slot_bytes=100) as writer, ShmRingReader(name) as reader:
        slot, generation = writer.write(np.full((10, 10), 1, np.uint8))
        with reader.view(slot, generation) as view:           # zero copy, validated afterwards
            assert not view.flags.writeable and (view == 1).all()
        with pytest.raises(FrameLost, match='torn copy discarded'):
            with reader.view(slot, generation) as view:
                writer.write(np.full((10, 10), 2, np.uint8))
                writer.write(np.full((10, 10), 3, np.uint8))     # lands in the viewed slot
                assert (view == 3).all()                         # what the consumer saw must be discarded


def test_reader_in_another_process_never_sees_a_torn_frame(name):
    """A writer process hammers a 2-slot ring unpaced; this process reads the newest frame again and again
    and checks every frame it gets is one whole frame: all pixels equal the value of its generation."""
    writer = WriterProcess(name, slots=2, h=480, w=640)
    try:
        writer.expect('ready')
        checked = lost = 0
        with ShmRingReader(name) as reader:
            deadline = time.monotonic() + 60
            while checked < 2000 and time.monotonic() < deadline:
                slot, generation = reader.latest()
                try:
                    got = reader.read(slot, generation)
                except FrameLost:
                    lost += 1
                    continue
                low, high = int(got.min()), int(got.max())
                assert low == high == value_of(generation), (
                    f'torn or wrong frame: generation {generation} has pixels {low}..{high}, '
                    f'expected all {value_of(generation)} (after {checked} good, {lost} lost)')
                checked += 1
            assert reader.lost == lost
        print(f"torn-read test: {checked} checked, {lost} lost")
        assert checked >= 200, f'only {checked} frames checked ({lost} lost) in 60 s'
    finally:
        writer.stop()
    assert writer.proc.returncode == 0
    assert not os.path.exists(segment_path(name))           # the writer's close unlinked it


# -- ownership, permissions, lifetime ---------------------------------------------------------------------
def test_segment_is_owner_only(name):
    with ShmRingWriter(name, slots=2, slot_bytes=100) as writer:
        assert writer.path == os.path.join('/dev/shm', name)
        mode = os.stat(writer.path).st_mode
        assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o600
        assert os.stat(writer.path).st_uid == os.getuid()
        with ShmRingReader(name) as reader:
            with reader.view(*writer.write(np.zeros((10, 10), np.uint8))) as view:
                with pytest.raises(ValueError):
                    view[0, 0] = 1                                  # readers map read-only


def test_readers_never_unlink_and_the_writer_does(name):
    writer = ShmRingWriter(name, slots=2, slot_bytes=100)
    ref = writer.write(np.full((10, 10), 5, np.uint8))
    reader = ShmRingReader(name)
    reader.close()
    assert os.path.exists(writer.path)
    reader = ShmRingReader(name)
    writer.close()
    assert not os.path.exists(writer.path) and writer.closed
    with pytest.raises(WriterGone, match='closed the ring'):
        reader.read(*ref)                        # its mapping still exists, but the writer has gone
    with pytest.raises(ValueError, match='closed'):
        writer.write(np.zeros((10, 10), np.uint8))
    with pytest.raises(WriterGone, match='does not exist'):
        ShmRingReader(name)
    reader.close()


def test_a_live_writer_is_never_displaced(name):
    with ShmRingWriter(name, slots=2, slot_bytes=100) as writer:
        with pytest.raises(RingInUse, match=f'PID {os.getpid()}'):
            ShmRingWriter(name, slots=2, slot_bytes=100)
        assert os.path.exists(writer.path)
        assert reclaim_stale(name) == []                     # a live ring is not swept either
        with ShmRingReader(name) as reader:
            assert np.array_equal(reader.read(*writer.write(frame(4, 5))), frame(4, 5))


def test_stale_segment_of_a_sigkilled_writer_is_reclaimed(name):
    writer = WriterProcess(name, slots=4, h=120, w=160)
    writer.expect('ready')
    old_reader = ShmRingReader(name)
    slot, generation = old_reader.latest()
    try:
        got = old_reader.read(slot, generation)
        assert (got == value_of(generation)).all()
    except FrameLost:
        pass                                     # overwritten already: the writer is fast
    writer.kill()                                # SIGKILL mid-stream: no close, no unlink
    dead_pid = writer.proc.pid
    assert os.path.exists(segment_path(name))
    with pytest.raises(WriterGone, match=f'PID {dead_pid} is dead'):
        old_reader.read(*old_reader.latest())    # a clear error, never the dead ring's pixels

    with ShmRingWriter(name, slots=2, slot_bytes=100) as new:
        assert new.reclaimed is not None and new.reclaimed.pid == dead_pid
        assert stat.S_IMODE(os.stat(new.path).st_mode) == 0o600
        with ShmRingReader(name) as reader:
            assert reader.owner.pid == os.getpid() and reader.create_id != old_reader.create_id
            image = np.full((10, 10), 42, np.uint8)
            assert np.array_equal(reader.read(*new.write(image)), image)
        with pytest.raises(WriterGone):
            old_reader.read(*old_reader.latest())   # still the dead ring: still refused
    old_reader.close()


def test_sweep_removes_dead_rings_by_prefix_and_keeps_live_ones(name):
    writer = WriterProcess(f'{name}_dead', slots=2, h=10, w=10)
    writer.expect('ready')
    writer.kill()
    with ShmRingWriter(f'{name}_live', slots=2, slot_bytes=100):
        removed = reclaim_stale(name)
        assert [(n, o.pid) for n, o in removed] == [(f'{name}_dead', writer.proc.pid)]
        assert not os.path.exists(segment_path(f'{name}_dead'))
        assert os.path.exists(segment_path(f'{name}_live'))


# -- errors -------------------------------------------------------------------------------------------------
def test_oversize_and_wrong_frames_are_clear_errors(name):
    with ShmRingWriter(name, slots=2, slot_bytes=640 * 480 * 3) as writer:
        with pytest.raises(ValueError, match=r'frame 641x480x3 is 923040 bytes, larger than the 921600-byte'):
            writer.write(np.zeros((480, 641, 3), np.uint8))
        with pytest.raises(ValueError, match='uint8'):
            writer.write(np.zeros((4, 4, 3), np.float32))
        with pytest.raises(ValueError, match='HxWxC'):
            writer.write(np.zeros((4, 4, 2), np.uint8))
        assert writer.generation == 0                       # nothing was half-written
    with pytest.raises(ValueError, match='at least 2 slots'):
        ShmRingWriter(name, slots=1)
    with pytest.raises(ValueError, match='invalid shared-memory ring name'):
        ShmRingWriter('../etc/passwd')


def test_foreign_files_and_other_layout_versions_are_refused(name):
    path = segment_path(name)
    with open(path, 'wb') as f:
        f.write(b'not a ring' * 1000)
    with pytest.raises(RingFormatError, match='not a vidaction frame ring'):
        ShmRingReader(name)
    with pytest.raises(RingFormatError, match='refusing to touch it'):
        ShmRingWriter(name, slots=2, slot_bytes=100)
    assert os.path.exists(path)                             # not ours: left alone
    os.unlink(path)

    with ShmRingWriter(name, slots=2, slot_bytes=100):
        fd = os.open(path, os.O_RDWR)
        os.pwrite(fd, (LAYOUT_VERSION + 1).to_bytes(8, 'little'), 8)
        os.close(fd)
        with pytest.raises(RingFormatError, match=f'layout version {LAYOUT_VERSION + 1}'):
            ShmRingReader(name)


def test_ring_names_are_sanitised():
    assert ring_name('vidaction', '/ns/camera', 12) == 'vidaction_ns_camera_12'
    assert segment_path('/abc') == '/dev/shm/abc'
    for bad in ('', '.hidden', 'a/b', 'x' * 201, 'name\n'):
        with pytest.raises(ValueError):
            segment_path(bad)


# -- CUDA IPC: the wire format everywhere, the real thing only with a GPU ----------------------------------
def test_cuda_ipc_handle_wire_format_round_trips_and_rejects_garbage():
    fields = {'device': 0, 'storage_handle': b'\x01\x02', 'storage_size_bytes': 6, 'storage_offset_bytes': 0,
              'ref_counter_handle': b'\x03', 'ref_counter_offset': 0, 'event_handle': b'\x04',
              'event_sync_required': True, 'size': [1, 2, 3], 'stride': [6, 3, 1], 'tensor_offset': 0,
              'dtype': 'uint8'}
    assert cuda_ipc.decode_handle(cuda_ipc.encode_handle(fields)) == fields
    with pytest.raises(ValueError, match='bad magic'):
        cuda_ipc.decode_handle(b'\x80\x04pickle')
    with pytest.raises(ValueError, match='dtype'):
        cuda_ipc.decode_handle(cuda_ipc.encode_handle({**fields, 'dtype': 'object'}))


@pytest.mark.skipif(cuda_ipc.available(), reason='checks the no-CUDA error path')
def test_cuda_ipc_says_clearly_when_there_is_no_cuda():
    with pytest.raises(RuntimeError, match='needs torch with a CUDA device'):
        cuda_ipc.share(None)


CUDA_CONSUMER = r'''
import sys, torch
from vidaction_ros.transport import cuda_ipc
t = cuda_ipc.open_shared(bytes.fromhex(sys.stdin.readline().strip()))
print(int(t.sum().item()), tuple(t.shape), t.device.type, flush=True)
t[0, 0, 0] = 255                                  # the producer must see this: same device memory
torch.cuda.synchronize()
print('written', flush=True)
sys.stdin.readline()                               # keep the mapping until the producer has looked
'''


@pytest.mark.skipif(not cuda_ipc.available(), reason='needs torch with a CUDA device')
def test_cuda_ipc_shares_device_memory_with_another_process():
    import torch
    tensor = torch.arange(2 * 3 * 4, dtype=torch.uint8, device='cuda').reshape(2, 3, 4)
    expected = int(tensor.sum().item())
    proc = subprocess.Popen([sys.executable, '-c', CUDA_CONSUMER], cwd=tempfile.gettempdir(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(cuda_ipc.share(tensor).hex() + '\n')
        proc.stdin.flush()
        assert proc.stdout.readline().split() == [str(expected), '(2,', '3,', '4)', 'cuda']
        assert proc.stdout.readline().strip() == 'written'
        torch.cuda.synchronize()
        assert int(tensor[0, 0, 0].item()) == 255
        proc.stdin.write('\n')
        proc.stdin.flush()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# -- loans: the producer fills the slot in place ------------------------------------------------------------
def test_loan_is_the_slot_itself_and_is_published_by_commit(name):
    import cv2
    source = frame(96, 128, seed=3)
    with ShmRingWriter(name, slots=3, slot_bytes=48 * 64 * 3) as writer, ShmRingReader(name) as reader:
        loan = writer.loan((48, 64, 3))
        assert (loan.slot, loan.generation) == (0, 1) and writer.loaned is loan
        assert loan.array.flags.writeable and loan.array.flags.c_contiguous
        assert np.shares_memory(loan.array, writer._data)                    # no staging buffer
        out = cv2.resize(source, (64, 48), dst=loan.array, interpolation=cv2.INTER_AREA)
        assert out is loan.array                                           # cv2 wrote into the slot
        with pytest.raises(FrameLost, match='being overwritten'):
            reader.read(loan.slot, loan.generation)                        # not published yet
        assert reader.latest() == (0, 0)
        assert writer.commit(loan) == (0, 1)
        assert writer.loaned is None and not loan.array.flags.writeable   # a late write cannot tear it
        with pytest.raises(ValueError):
            loan.array[0, 0, 0] = 1
        expected = cv2.resize(source, (64, 48), interpolation=cv2.INTER_AREA)
        assert np.array_equal(reader.read(0, 1), expected) and reader.latest() == (0, 1)
        with pytest.raises(ValueError, match='not the outstanding loan'):
            writer.commit(loan)                                            # twice: refused
        gray = writer.loan((10, 12))                                        # HxW works too
        gray.array[:] = 7
        assert writer.commit(gray) == (1, 2) and (reader.read(1, 2) == 7).all()


def test_abandoned_loan_leaves_the_ring_consistent(name):
    with ShmRingWriter(name, slots=3, slot_bytes=100) as writer, ShmRingReader(name) as reader:
        refs = [writer.write(np.full((10, 10), v, np.uint8)) for v in (1, 2, 3)]   # slots 0, 1, 2
        loan = writer.loan((10, 10))                                      # slot 0 again: generation 4
        assert (loan.slot, loan.generation) == (0, 4)
        loan.array[:5] = 99                                                 # half filled, then the producer fails
        writer.abandon(loan)
        assert writer.loaned is None and writer.abandoned == 1 and not loan.array.flags.writeable
        with pytest.raises(FrameLost, match='holds generation 0'):
            reader.read(*refs[0])                                           # what the slot held is gone, clearly
        with pytest.raises(FrameLost):
            reader.read(0, 4)                                               # the abandoned frame never existed
        assert (reader.read(*refs[1]) == 2).all() and (reader.read(*refs[2]) == 3).all()
        assert reader.latest() == refs[2] and writer.generation == 3        # nothing was published
        assert writer.write(np.full((10, 10), 4, np.uint8)) == (0, 4)       # the slot and number are reused
        assert (reader.read(0, 4) == 4).all()
        writer.abandon(loan)                                                # no longer outstanding: no-op
        assert writer.abandoned == 1 and (reader.read(0, 4) == 4).all()


def test_a_new_loan_or_write_abandons_a_forgotten_loan(name):
    with ShmRingWriter(name, slots=2, slot_bytes=100) as writer, ShmRingReader(name) as reader:
        first = writer.loan((10, 10))
        second = writer.loan((10, 10))                                      # first was never handed back
        assert writer.abandoned == 1 and not first.array.flags.writeable
        assert (second.slot, second.generation) == (first.slot, first.generation)
        with pytest.raises(ValueError, match='not the outstanding loan'):
            writer.commit(first)
        second.array[:] = 5
        writer.commit(second)
        third = writer.loan((10, 10))
        ref = writer.write(np.full((10, 10), 6, np.uint8))                  # a copying write abandons it too
        assert writer.abandoned == 2 and ref == (third.slot, third.generation)
        assert (reader.read(*ref) == 6).all() and (reader.read(second.slot, second.generation) == 5).all()


def test_loan_errors_change_nothing(name):
    with ShmRingWriter(name, slots=2, slot_bytes=100) as writer:
        with pytest.raises(ValueError, match='larger than the 100-byte slots'):
            writer.loan((10, 11))
        with pytest.raises(ValueError, match='HxWxC'):
            writer.loan((4, 4, 2))
        assert writer.generation == 0 and writer.loaned is None
        loan = writer.loan((10, 10))
    assert not loan.array.flags.writeable                                   # close hands it back


def test_a_view_is_never_valid_across_a_loan_of_its_slot(name):
    """A slow reader holding a view while the writer lends and fills that very slot: the reader sees the
    pixels change under it, and the with-block tells it to discard them (never a silent torn frame)."""
    with ShmRingWriter(name, slots=2, slot_bytes=100) as writer, ShmRingReader(name) as reader:
        slot, generation = writer.write(np.full((10, 10), 1, np.uint8))
        writer.write(np.full((10, 10), 2, np.uint8))
        with pytest.raises(FrameLost, match='torn copy discarded'):
            with reader.view(slot, generation) as view:
                loan = writer.loan((10, 10))                                # lands in the viewed slot
                loan.array[:5] = 3                                          # half written
                assert view[0, 0] == 3 and view[9, 9] == 1                  # torn, as seen from inside
                writer.abandon(loan)
        with pytest.raises(FrameLost):
            reader.read(slot, generation)


# A loaning writer process: fills each loaned slot band by band (so a torn read would mix generations
# row-wise), until SIGINT. In bursts: burst_s s unpaced (slots lent and filled under a slow reader's feet, as
# fast as this machine goes), then pause_s s idle (a camera between frames), so that on a machine of any speed
# some slow reads overlap the writer and some complete. Unpaced throughout, a writer on a fast machine laps
# nearly every slow read, and how many complete in the test's time depends on the machine, not the ring.
LOAN_WRITER = r'''
import os
import signal
import sys
import time
# Stopped with SIGINT: take it back if this process was started with it ignored (background CI shells).
signal.signal(signal.SIGINT, signal.default_int_handler)
parent = os.getppid()                     # and it stops by itself once the test process is gone
import numpy as np
from vidaction_ros.transport.shm_ring import ShmRingWriter
name, slots, h, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
burst_s, pause_s = float(sys.argv[5]), float(sys.argv[6])
rows = np.arange(h, dtype=np.int64)[:, None, None]
with ShmRingWriter(name, slots=slots, slot_bytes=h * w * 3) as ring:
    print('ready', flush=True)
    try:
        while os.getppid() == parent:
            burst_end = time.monotonic() + burst_s
            while True:                   # a burst: no pacing at all
                loan = ring.loan((h, w, 3))
                pattern = ((loan.generation * 31 + rows) % 256).astype(np.uint8)
                for top in range(0, h, h // 4):
                    loan.array[top:top + h // 4] = pattern[top:top + h // 4]
                ring.commit(loan)
                if time.monotonic() >= burst_end:
                    break
            time.sleep(pause_s)           # pacing, not readiness: the camera idle between bursts
    except KeyboardInterrupt:
        pass
try:
    print('closed', flush=True)
except BrokenPipeError:
    pass                                  # the test process is gone
'''


def expected_rows(generation: int, h: int) -> np.ndarray:
    return ((generation * 31 + np.arange(h)) % 256).astype(np.uint8)


def test_loaning_writer_and_slow_reader_never_produce_a_torn_frame(name):
    """Loaning writer in bursts, slow reader (row by row checksums on a zero-copy view, and copies): every
    frame the reader accepts is exactly the frame of its generation; the rest are reported lost. Besides 300
    reads, 100 distinct generations must be read whole (in a pause the same frame is read again and again),
    5 of them row by row: reads the writer's pauses let complete on a machine of any speed, while its bursts
    keep lending the slot a slow read is on (a ring that let a torn view through fails the first assert)."""
    h, w = 240, 320
    writer = WriterProcess.__new__(WriterProcess)
    writer.proc = subprocess.Popen([sys.executable, '-c', LOAN_WRITER, name, '3', str(h), str(w), '0.05', '0.05'],
                                   cwd=tempfile.gettempdir(), stdout=subprocess.PIPE, text=True)
    writer.lines = queue.Queue()
    threading.Thread(target=writer._pump, daemon=True).start()
    try:
        writer.expect('ready')
        checked = slow_checked = lost = slow_lost = 0
        good, slow_good = set(), set()           # distinct generations read whole (slow: row by row)
        with ShmRingReader(name) as reader:
            deadline = time.monotonic() + 60
            while (checked < 300 or len(good) < 100 or len(slow_good) < 5) and time.monotonic() < deadline:
                slot, generation = reader.latest()
                if generation == 0:
                    continue
                slow = (checked + lost) % 3 == 0
                try:
                    if slow:
                        with reader.view(slot, generation) as view:       # slow: one row at a time
                            sums = [int(view[r].sum(dtype=np.uint64)) for r in range(h)]
                        got_rows = np.array(sums) // (w * 3)
                        exact = all(s % (w * 3) == 0 for s in sums)
                    else:
                        got = reader.read(slot, generation)
                        got_rows = got[:, 0, 0]
                        exact = bool((got == got[:, :1, :1]).all())
                except WriterGone:
                    raise AssertionError('the loaning writer process died') from None
                except FrameLost:
                    lost += 1
                    slow_lost += slow
                    continue
                assert exact and np.array_equal(got_rows, expected_rows(generation, h)), (
                    f'torn or wrong frame accepted: generation {generation} (after {checked} good, {lost} lost)')
                checked += 1
                slow_checked += slow
                good.add(generation)
                if slow:
                    slow_good.add(generation)
        print(f'loan torn-read test: {checked} checked ({slow_checked} slow) of {len(good)} generations '
              f'({len(slow_good)} slow), {lost} lost ({slow_lost} slow)')
        assert checked >= 300 and len(good) >= 100 and len(slow_good) >= 5, (
            f'only {checked} reads of {len(good)} generations ({len(slow_good)} row by row) whole in 60 s; '
            f'{lost} reads lost')
    finally:
        writer.stop()
    assert writer.proc.returncode == 0


def test_doorbell_path_is_advertised_in_the_ring_header(name):
    with ShmRingWriter(name, slots=2, slot_bytes=100) as writer, ShmRingReader(name) as reader:
        assert reader.doorbell() == ''
        writer.set_doorbell('/run/user/1/vidaction-bell-1-2-x/w0.sock')
        assert reader.doorbell() == '/run/user/1/vidaction-bell-1-2-x/w0.sock'
        writer.set_doorbell('')
        assert reader.doorbell() == ''
        with pytest.raises(ValueError, match='longer than'):
            writer.set_doorbell('x' * 300)
