"""POSIX shared-memory frame ring: one writer (the camera), any number of readers in other processes.

Pure core: no ROS imports. The transport module maps FrameRef (store, slot, generation) onto it.

Segment layout (file /dev/shm/<name>, i.e. what shm_open("/<name>") opens; all integers little-endian u64)
  [0, 4096)                 ring header. Words 0..15 are frozen across layout versions, so any version can
                            read who owns a segment (and reclaim it) even when it cannot use it:
                              0 magic b'VIDARING'   1 layout version   2 slot count   3 slot capacity (bytes)
                              4 slot stride         5 data offset      6 total size   7 writer pid
                              8 writer start time (clock ticks since boot, /proc/<pid>/stat field 22)
                              9 writer pid-namespace inode             10 state (1 open, 2 closed)
                             11 newest committed generation            12 creation time (ns since epoch)
                            bytes 128..144 boot id (/proc/sys/kernel/random/boot_id), 144..160 random creation id
                            bytes 512..520 length of the doorbell socket path (u64, 0: none), 520.. the path
                            (UTF-8, at most 255 bytes; see shm_doorbell). Readers of older builds ignore it.
  [4096, data offset)       slot headers, 64 bytes each: 0 seq (seqlock)  1 generation  2 height  3 width
                            4 channels  5 nbytes  6 commit time (CLOCK_MONOTONIC ns)
  [data offset, ...)        slot pixel buffers, page aligned, `stride` bytes apart

Seqlock per slot. The writer makes seq odd, writes generation + shape + pixels, then makes seq even again.
A reader loads seq (odd: the slot is being overwritten -> FrameLost), checks the generation, copies the pixels
out, and loads seq again: if it changed, the copy may be torn and is discarded (FrameLost). Generations are
global frame numbers (1, 2, 3 ...) of this ring incarnation, so a slot reused after `slots` frames carries a
different generation and a late reader is told its frame is gone instead of being handed another one.

Loans (like ROS 2 loaned messages): loan(shape) begins the write of the next slot (seq odd) and hands the
producer a writable view of the slot itself, which it fills in place (e.g. cv2.resize(..., dst=view));
commit(loan) ends the write (seq even) and makes the view read-only. abandon(loan) (or a new loan / write
while one is outstanding) marks the slot empty (generation 0, seq even) and rolls the generation counter
back, so the next frame reuses that slot and number: the ring stays consistent, readers of the frame the
slot held before are told it is gone, and no reader can ever have referred to the abandoned frame.

Memory-ordering assumption (documented because Python has no fences): every step above is a separate call
from the interpreter into C (an aligned 8-byte memoryview/numpy item load/store, a memcpy), which the C compiler cannot
reorder across, and on x86-64 (TSO) the CPU keeps stores in program order and loads in program order, which
is exactly what a seqlock needs. Weakly ordered CPUs (aarch64, e.g. Jetson) may reorder them; there the
check is best-effort, `ORDERING_GUARANTEED` is False and the first ring opened says so (RuntimeWarning).

Lifetime. The segment is created under a temporary name with mode 0600 (owner only), fully initialised, and
then hard-linked to its final name, so a reader never sees a half-built header. At start a writer that finds
a segment of the same name reclaims it when the recorded writer is dead (pid gone, zombie, pid reused, or a
previous boot) and refuses, naming the PID, when it is alive; reclaim_stale(prefix) sweeps dead rings whose
names differ (a name with a PID in it). close() marks the ring closed and unlinks it (also at exit);
readers never unlink. A reader that still maps an unlinked segment keeps consistent old pixels, but reads
raise WriterGone once the writer closed or died.
"""
from __future__ import annotations

import mmap
import os
import platform
import re
import secrets
import time
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .frame_store import FrameLost

SHM_DIR = '/dev/shm'
MAGIC = b'VIDARING'
LAYOUT_VERSION = 1
HEADER_BYTES = 4096
SLOT_HEADER_BYTES = 64
PAGE = mmap.PAGESIZE
STATE_OPEN, STATE_CLOSED = 1, 2
ORDERING_GUARANTEED = platform.machine().lower() in ('x86_64', 'amd64')

# Ring header words (u64 index) and slot header words.
_W_MAGIC, _W_VERSION, _W_SLOTS, _W_CAPACITY, _W_STRIDE, _W_DATA, _W_SIZE = 0, 1, 2, 3, 4, 5, 6
_W_PID, _W_START, _W_PIDNS, _W_STATE, _W_NEWEST, _W_CREATED = 7, 8, 9, 10, 11, 12
_BOOT_ID_AT, _CREATE_ID_AT = 128, 144
_BELL_LEN_AT, _BELL_PATH_AT, _BELL_PATH_MAX = 512, 520, 255
_S_SEQ, _S_GEN, _S_H, _S_W, _S_C, _S_NBYTES, _S_TIME = 0, 1, 2, 3, 4, 5, 6
_SLOT_WORD0 = HEADER_BYTES // 8            # u64 index of slot 0's header in the segment
_SLOT_WORDS = SLOT_HEADER_BYTES // 8


def _words(mm: mmap.mmap) -> memoryview:
    """The segment as u64 words: item access is one aligned 8-byte load/store from C, without numpy scalars
    (the hot path of every frame reads and writes a handful of header words)."""
    return memoryview(mm).cast('B').cast('Q')

_NAME_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$')


class WriterGone(FrameLost):
    """The ring's writer closed it or died: its frames are no longer served."""


class RingInUse(RuntimeError):
    """A live writer already owns a ring of that name."""


class RingFormatError(ValueError):
    """The segment is not a ring this code can read (foreign file, other layout version, other shape)."""


def _warn_ordering_once() -> None:
    global _ORDERING_WARNED
    if not ORDERING_GUARANTEED and not _ORDERING_WARNED:
        _ORDERING_WARNED = True
        warnings.warn(f'shm_ring: the seqlock relies on x86-64 store/load ordering; on {platform.machine()} a torn '
                      f'frame is unlikely but not excluded (no memory fences from Python)', RuntimeWarning,
                      stacklevel=3)


_ORDERING_WARNED = False


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def segment_path(name: str) -> str:
    """/dev/shm path of a ring name ('cam_1' or the shm_open spelling '/cam_1')."""
    bare = name[1:] if name.startswith('/') else name
    if not _NAME_RE.fullmatch(bare):
        raise ValueError(f'invalid shared-memory ring name {name!r}: use 1-200 of [A-Za-z0-9_.-], '
                         f'not starting with "." or "-"')
    return os.path.join(SHM_DIR, bare)


def ring_name(*parts: object) -> str:
    """A valid ring name from arbitrary parts, e.g. ring_name('vidaction', '/ns/camera', pid)."""
    cleaned = (re.sub(r'[^A-Za-z0-9_.-]+', '_', str(part)).strip('_.-') for part in parts)
    text = '_'.join(part for part in cleaned if part) or 'ring'
    return text[:200]


# -- who owns a segment ------------------------------------------------------------------------------------
def _boot_id() -> bytes:
    try:
        with open('/proc/sys/kernel/random/boot_id') as f:
            return bytes.fromhex(f.read().strip().replace('-', ''))[:16].ljust(16, b'\0')
    except (OSError, ValueError):
        return b'\0' * 16


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, None when there is no such process."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            raw = f.read().decode('ascii', 'replace')
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return ('?', 0)
    fields = raw[raw.rfind(')') + 2:].split()   # the command name may contain spaces and ')'
    return fields[0], int(fields[19])


def _pid_namespace() -> int:
    try:
        return os.stat('/proc/self/ns/pid').st_ino
    except OSError:
        return 0


_BOOT_ID = _boot_id()
_PIDNS = _pid_namespace()


@dataclass(frozen=True)
class Owner:
    """Who created a segment, as recorded in its header."""
    pid: int
    start_ticks: int
    pid_namespace: int
    boot_id: bytes
    version: int

    def status(self) -> str:
        """'alive', 'dead' or 'unknown' (another PID namespace: its PIDs mean nothing here)."""
        if self.boot_id != _BOOT_ID and self.boot_id != b'\0' * 16 and _BOOT_ID != b'\0' * 16:
            return 'dead'                       # written before the last reboot
        if self.pid_namespace and _PIDNS and self.pid_namespace != _PIDNS:
            return 'unknown'
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return 'dead'
        except PermissionError:
            pass                                # exists, belongs to someone else
        stat = _proc_stat(self.pid)
        if stat is None or stat[0] in ('Z', 'X'):
            return 'dead'                       # gone meanwhile, or killed and not yet reaped
        if self.start_ticks and stat[1] and stat[1] != self.start_ticks:
            return 'dead'                       # the PID was reused by an unrelated process
        return 'alive'


def read_owner(path: str) -> Owner:
    """The recorded writer of a ring segment; RingFormatError when the file is not a ring at all."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = os.pread(fd, 160, 0)
    finally:
        os.close(fd)
    if len(raw) < 160 or raw[:8] != MAGIC:
        raise RingFormatError(f'{path} is not a vidaction frame ring (bad magic); refusing to touch it — '
                              f'remove it by hand if it is stale')
    words = np.frombuffer(raw[:128], dtype='<u8')
    return Owner(int(words[_W_PID]), int(words[_W_START]), int(words[_W_PIDNS]),
                 raw[_BOOT_ID_AT:_BOOT_ID_AT + 16], int(words[_W_VERSION]))


def reclaim_stale(prefix: str) -> list[tuple[str, Owner | None]]:
    """Unlink rings named prefix* whose writer is dead, and temporary files a crash left mid-creation.

    A writer whose name contains its PID (a new name every start) never meets its crashed predecessor's
    segment by name; sweeping its own prefix at start is how that memory comes back. Live, unknown and
    foreign files are left alone. Returns [(name, owner)] of what was removed (owner None for temp files).
    """
    segment_path(prefix)                         # validates the characters
    removed: list[tuple[str, Owner | None]] = []
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for entry in entries:
        path = os.path.join(SHM_DIR, entry)
        if entry.startswith(prefix):
            try:
                owner = read_owner(path)
            except (OSError, RingFormatError):
                continue
            if owner.status() != 'dead':
                continue
            removed.append((entry, owner))
        elif entry.startswith('.' + prefix) and entry.endswith('.tmp'):
            pid = entry[:-4].rsplit('.', 2)[-2]  # .<name>.<pid>.<hex>.tmp
            if not pid.isdigit():
                continue
            stat = _proc_stat(int(pid))
            if stat is not None and stat[0] not in ('Z', 'X'):
                continue                         # its creator still runs (maybe creating it right now)
            removed.append((entry, None))
        else:
            continue
        try:
            os.unlink(path)
        except OSError:
            removed.pop()
    return removed


def _frame_layout(frame: np.ndarray) -> tuple[int, int, int]:
    if frame.dtype != np.uint8:
        raise ValueError(f'frame ring holds uint8 pixels, got dtype {frame.dtype}')
    return _shape_layout(frame.shape)


def _shape_layout(shape: tuple[int, ...]) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in shape)
    if any(v < 0 for v in shape):
        raise ValueError(f'frame ring holds HxW or HxWxC (C in 1, 3, 4) images, got shape {shape}')
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3 and shape[2] in (1, 3, 4):
        return shape[0], shape[1], shape[2]
    raise ValueError(f'frame ring holds HxW or HxWxC (C in 1, 3, 4) images, got shape {shape}')


class Loan:
    """A slot lent to the producer: `array` is a writable view of the slot itself (C-contiguous uint8).
    Hand it back with ShmRingWriter.commit (publish) or abandon (discard)."""
    __slots__ = ('slot', 'generation', 'array', 'active')

    def __init__(self, slot: int, generation: int, array: np.ndarray):
        self.slot, self.generation, self.array, self.active = slot, generation, array, True

    def __repr__(self) -> str:
        state = 'active' if self.active else 'returned'
        return f'Loan(slot={self.slot}, generation={self.generation}, shape={self.array.shape}, {state})'


def _close_mapping(mm: mmap.mmap | None) -> None:
    if mm is None or mm.closed:
        return
    try:
        mm.close()
    except BufferError:
        pass    # someone still holds a view of it; the mapping goes away when the last view does


# -- writer ------------------------------------------------------------------------------------------------
def _finalize_writer(path: str, inode: int, owner_pid: int, mm: mmap.mmap) -> None:
    """Runs at close() or interpreter exit: mark closed, unlink our own segment (never a successor's)."""
    if os.getpid() != owner_pid:
        return                                  # a forked child inherited the object: not its segment
    if not mm.closed:
        mm[_W_STATE * 8:_W_STATE * 8 + 8] = STATE_CLOSED.to_bytes(8, 'little')
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    _close_mapping(mm)


class ShmRingWriter:
    """Creates the ring and writes frames into it, oldest slot first. One writer per ring, one thread."""

    def __init__(self, name: str, slots: int = 8, slot_bytes: int = 640 * 480 * 3):
        if slots < 2:
            raise ValueError(f'a frame ring needs at least 2 slots, got {slots}')
        if slot_bytes < 1:
            raise ValueError(f'slot_bytes must be positive, got {slot_bytes}')
        if not os.path.isdir(SHM_DIR):
            raise RuntimeError(f'POSIX shared memory needs {SHM_DIR} (Linux); use another transport here')
        _warn_ordering_once()
        self.name = name[1:] if name.startswith('/') else name
        self.path = segment_path(self.name)
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.stride = _round_up(slot_bytes, PAGE)
        self.data_offset = HEADER_BYTES + _round_up(slots * SLOT_HEADER_BYTES, PAGE)
        self.size = self.data_offset + slots * self.stride
        self.reclaimed: Owner | None = None    # the dead writer whose segment we replaced, if any
        self.generation = 0
        self.abandoned = 0                      # loans handed back without a commit
        self._next = 0
        self._loan: Loan | None = None          # the outstanding loan (one at a time)
        fd, inode = self._create()
        try:
            # tmpfs is sparse: pages of the slots cost memory only once a frame touches them.
            self._mm = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._hdr = np.frombuffer(self._mm, dtype='<u8', count=HEADER_BYTES // 8)
        self._slot_hdr = np.frombuffer(self._mm, dtype='<u8', count=slots * SLOT_HEADER_BYTES // 8,
                                       offset=HEADER_BYTES).reshape(slots, SLOT_HEADER_BYTES // 8)
        self._data = np.frombuffer(self._mm, dtype=np.uint8, count=slots * self.stride,
                                   offset=self.data_offset).reshape(slots, self.stride)
        self._words = _words(self._mm)
        self._finalizer = weakref.finalize(self, _finalize_writer, self.path, inode, os.getpid(), self._mm)

    # Creation: build under a private temporary name, then hard-link to the public name (atomic, fails if
    # the name exists), so readers and rival writers only ever see complete headers.
    def _create(self) -> tuple[int, int]:
        tmp = os.path.join(SHM_DIR, f'.{self.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp')
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)                # explicit, whatever the umask
            os.ftruncate(fd, self.size)
            os.pwrite(fd, self._header_bytes(), 0)
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    return fd, os.fstat(fd).st_ino
                except FileExistsError:
                    self._reclaim_or_refuse()
            raise RingInUse(f'shared-memory ring {self.name!r}: another writer keeps recreating {self.path}')
        except BaseException:
            os.close(fd)
            raise
        finally:
            os.unlink(tmp)

    def _header_bytes(self) -> bytes:
        words = np.zeros(16, dtype='<u8')
        stat = _proc_stat(os.getpid())
        words[[_W_VERSION, _W_SLOTS, _W_CAPACITY, _W_STRIDE, _W_DATA, _W_SIZE, _W_PID, _W_START, _W_PIDNS,
               _W_STATE, _W_NEWEST, _W_CREATED]] = [
            LAYOUT_VERSION, self.slots, self.slot_bytes, self.stride, self.data_offset, self.size, os.getpid(),
            stat[1] if stat else 0, _PIDNS, STATE_OPEN, 0, time.time_ns()]
        raw = bytearray(words.tobytes())
        raw[0:8] = MAGIC
        return bytes(raw) + _BOOT_ID + secrets.token_bytes(16)

    def _reclaim_or_refuse(self) -> None:
        try:
            owner = read_owner(self.path)
        except FileNotFoundError:
            return                              # vanished meanwhile: just retry the link
        status = owner.status()
        if status == 'alive':
            raise RingInUse(f'shared-memory ring {self.name!r} ({self.path}) belongs to a running writer, PID '
                            f'{owner.pid}: stop it or choose another name')
        if status == 'unknown':
            raise RingInUse(f'shared-memory ring {self.name!r} ({self.path}) was created by PID {owner.pid} in '
                            f'another PID namespace, so whether it still runs cannot be told from here; '
                            f'remove {self.path} if it is stale')
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.reclaimed = owner

    # -- writing ----------------------------------------------------------------------------------------
    def _begin(self, frame: np.ndarray) -> tuple[int, int, np.ndarray]:
        """Open the next slot for writing (seq odd) and return (slot, generation, destination view)."""
        _frame_layout(frame)
        return self._begin_shape(frame.shape)

    def _begin_shape(self, shape: tuple[int, ...]) -> tuple[int, int, np.ndarray]:
        h, w, c = _shape_layout(shape)
        nbytes = h * w * c
        if nbytes > self.slot_bytes:
            raise ValueError(f'frame {w}x{h}x{c} is {nbytes} bytes, larger than the {self.slot_bytes}-byte slots '
                             f'of shared-memory ring {self.name!r}; create the ring for the largest frame '
                             f'(e.g. the camera max_width x max_height x 3)')
        if self.closed:
            raise ValueError(f'shared-memory ring {self.name!r} is closed')
        if self._loan is not None:
            self.abandon(self._loan)          # one writer, one slot in flight: a forgotten loan is dropped
        slot = self._next
        self._next = (slot + 1) % self.slots
        self.generation += 1
        words, at = self._words, _SLOT_WORD0 + slot * _SLOT_WORDS
        words[at + _S_SEQ] += 1                       # odd: readers of this slot back off
        words[at + _S_GEN] = self.generation
        words[at + _S_H], words[at + _S_W], words[at + _S_C], words[at + _S_NBYTES] = h, w, c, nbytes
        shape = (h, w) if len(tuple(shape)) == 2 else (h, w, c)
        return slot, self.generation, self._data[slot, :nbytes].reshape(shape)

    def _commit(self, slot: int) -> None:
        words, at = self._words, _SLOT_WORD0 + slot * _SLOT_WORDS
        words[at + _S_TIME] = time.monotonic_ns()
        words[at + _S_SEQ] += 1                       # even: stable again
        words[_W_NEWEST] = words[at + _S_GEN]

    def write(self, frame: np.ndarray) -> tuple[int, int]:
        """Copy one frame into the oldest slot (one memcpy); returns (slot, generation) for the FrameRef."""
        slot, generation, dst = self._begin(frame)
        try:
            np.copyto(dst, frame)
        except BaseException:
            self._abandon_slot(slot)
            raise
        self._commit(slot)
        return slot, generation

    # -- loans: the producer fills the slot in place ----------------------------------------------------
    def loan(self, shape: tuple[int, ...]) -> Loan:
        """Begin writing the oldest slot and lend it: Loan.array is a writable HxW or HxWxC uint8 view of the
        slot itself. Fill it completely (cv2.resize(src, (w, h), dst=loan.array) writes in place), then
        commit(loan); or abandon(loan). Until then readers of that slot get FrameLost (seqlock odd). A new
        loan or write while this one is outstanding abandons it."""
        slot, generation, array = self._begin_shape(shape)
        self._loan = Loan(slot, generation, array)
        return self._loan

    def _check_loan(self, loan: Loan, what: str) -> None:
        if not isinstance(loan, Loan) or loan is not self._loan or not loan.active:
            raise ValueError(f'shared-memory ring {self.name!r}: cannot {what} {loan!r}: it is not the outstanding '
                             f'loan of this ring (already committed or abandoned, or replaced by a later loan)')

    def commit(self, loan: Loan) -> tuple[int, int]:
        """Publish a filled loan: the slot becomes readable, the view read-only. Returns (slot, generation)."""
        self._check_loan(loan, 'commit')
        if self._hdr is None:
            raise ValueError(f'shared-memory ring {self.name!r} is closed')
        self._commit(loan.slot)
        self._return(loan)
        return loan.slot, loan.generation

    def abandon(self, loan: Loan) -> None:
        """Discard a loan (e.g. the producer raised mid-fill): the slot is marked empty (readers of what it held
        before are told it is gone), the generation is rolled back, and the next frame reuses the slot.
        Abandoning a loan that is no longer outstanding does nothing."""
        if loan is not self._loan or not loan.active:
            return
        if self._slot_hdr is not None:
            self._abandon_slot(loan.slot)
        self._return(loan)

    def _abandon_slot(self, slot: int) -> None:
        words, at = self._words, _SLOT_WORD0 + slot * _SLOT_WORDS
        words[at + _S_GEN] = 0                        # matches no reference: 0 is never a frame's generation
        words[at + _S_H] = words[at + _S_W] = words[at + _S_C] = words[at + _S_NBYTES] = 0
        words[at + _S_SEQ] += 1                       # even again: consistent (empty)
        # The slot in flight is always the one begun last: nobody was ever told of its generation, so the
        # number and the slot are reused by the next frame.
        self.generation -= 1
        self._next = slot
        self.abandoned += 1

    def _return(self, loan: Loan) -> None:
        loan.active = False
        loan.array.flags.writeable = False            # writing after commit/abandon would tear a published frame
        self._loan = None

    @property
    def loaned(self) -> Loan | None:
        """The outstanding loan, if any."""
        return self._loan

    # -- doorbell advertisement (shm_doorbell) --------------------------------------------------------------
    def set_doorbell(self, path: str) -> None:
        """Advertise the writer's doorbell socket in the ring header ('' withdraws it). Readers find it with
        ShmRingReader.doorbell() and register there to be told of each frame without DDS."""
        raw = path.encode()
        if len(raw) > _BELL_PATH_MAX:
            raise ValueError(f'doorbell path longer than {_BELL_PATH_MAX} bytes: {path!r}')
        self._mm[_BELL_LEN_AT:_BELL_LEN_AT + 8] = (0).to_bytes(8, 'little')
        self._mm[_BELL_PATH_AT:_BELL_PATH_AT + len(raw)] = raw
        self._mm[_BELL_LEN_AT:_BELL_LEN_AT + 8] = len(raw).to_bytes(8, 'little')   # length last: never partial

    def close(self) -> None:
        """Mark the ring closed and unlink it. Readers already attached keep their mapping."""
        if self._loan is not None:
            self._return(self._loan)
        self._hdr = self._slot_hdr = self._data = None
        if self._words is not None:
            self._words.release()                     # lets the mapping close
            self._words = None
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> 'ShmRingWriter':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- reader ------------------------------------------------------------------------------------------------
class ShmRingReader:
    """Attaches read-only to an existing ring. Never unlinks it. Safe to share between threads."""

    def __init__(self, name: str):
        self.name = name[1:] if name.startswith('/') else name
        self.path = segment_path(self.name)
        self.lost = 0                           # reads refused (overwritten, torn, writer gone)
        _warn_ordering_once()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise WriterGone(f'shared-memory ring {self.name!r} does not exist ({self.path}): its writer has '
                             f'not started yet or has gone') from None
        try:
            st = os.fstat(fd)
            raw = os.pread(fd, 160, 0)
            self._parse_header(raw, st.st_size)
            self.inode = st.st_ino
            self._mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self._hdr = np.frombuffer(self._mm, dtype='<u8', count=HEADER_BYTES // 8)
        self._slot_hdr = np.frombuffer(self._mm, dtype='<u8', count=self.slots * SLOT_HEADER_BYTES // 8,
                                       offset=HEADER_BYTES).reshape(self.slots, SLOT_HEADER_BYTES // 8)
        self._data = np.frombuffer(self._mm, dtype=np.uint8, count=self.slots * self.stride,
                                   offset=self._data_offset).reshape(self.slots, self.stride)
        self._words = _words(self._mm)

    def _parse_header(self, raw: bytes, file_size: int) -> None:
        if len(raw) < 160 or raw[:8] != MAGIC:
            raise RingFormatError(f'{self.path} is not a vidaction frame ring (bad magic or truncated)')
        words = np.frombuffer(raw[:128], dtype='<u8')
        version = int(words[_W_VERSION])
        if version != LAYOUT_VERSION:
            raise RingFormatError(f'shared-memory ring {self.name!r} has layout version {version}, this reader '
                                  f'understands {LAYOUT_VERSION}: run the same vidaction_ros on both sides')
        self.slots = int(words[_W_SLOTS])
        self.slot_bytes = int(words[_W_CAPACITY])
        self.stride = int(words[_W_STRIDE])
        self._data_offset, size = int(words[_W_DATA]), int(words[_W_SIZE])
        if (self.slots < 1 or size != file_size or self.stride < self.slot_bytes
                or self._data_offset < HEADER_BYTES + self.slots * SLOT_HEADER_BYTES
                or self._data_offset + self.slots * self.stride != size):
            raise RingFormatError(f'shared-memory ring {self.name!r}: header describes {self.slots} slots of '
                                  f'{self.slot_bytes} bytes in {size} bytes, but the segment is {file_size} bytes')
        self.owner = Owner(int(words[_W_PID]), int(words[_W_START]), int(words[_W_PIDNS]),
                           raw[_BOOT_ID_AT:_BOOT_ID_AT + 16], version)
        self.create_id = raw[_CREATE_ID_AT:_CREATE_ID_AT + 16]
        # Per-read liveness is a kill(pid, 0): only meaningful when the writer's PIDs are ours.
        self._check_pid = not (self.owner.pid_namespace and _PIDNS and self.owner.pid_namespace != _PIDNS)

    def is_open(self) -> bool:
        """The writer has not closed the ring (says nothing about a writer that died without closing)."""
        return self._words is not None and self._words[_W_STATE] == STATE_OPEN

    def writer_alive(self) -> bool:
        if self._words is None or self._words[_W_STATE] != STATE_OPEN:
            return False
        if not self._check_pid:
            return True
        try:
            os.kill(self.owner.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def doorbell(self) -> str:
        """The writer's doorbell socket path advertised in the header, '' when it has none."""
        if self._hdr is None:
            return ''
        length = int.from_bytes(self._mm[_BELL_LEN_AT:_BELL_LEN_AT + 8], 'little')
        if not 0 < length <= _BELL_PATH_MAX:
            return ''
        try:
            return bytes(self._mm[_BELL_PATH_AT:_BELL_PATH_AT + length]).decode()
        except UnicodeDecodeError:
            return ''

    def latest(self) -> tuple[int, int]:
        """(slot, generation) of the newest committed frame; generation 0 when none was written yet."""
        generation = self._words[_W_NEWEST]
        return (generation - 1) % self.slots if generation else 0, generation

    def _lost(self, message: str, cls: type[FrameLost] = FrameLost) -> FrameLost:
        self.lost += 1
        return cls(f'shared-memory ring {self.name!r}: {message}')

    def _open_slot(self, slot: int, generation: int):
        """Validate a slot before reading it; returns (seq, source view)."""
        if self._hdr is None:
            raise self._lost('reader is closed', WriterGone)
        if not 0 <= slot < self.slots:
            raise self._lost(f'slot {slot} out of range (0..{self.slots - 1})')
        if generation <= 0:
            raise self._lost(f'generation {generation} names no frame (generations start at 1)')
        if not self.writer_alive():
            closed = self._words[_W_STATE] != STATE_OPEN
            raise self._lost(f'writer PID {self.owner.pid} ' + ('closed the ring' if closed else 'is dead'),
                             WriterGone)
        words, at = self._words, _SLOT_WORD0 + slot * _SLOT_WORDS
        seq = words[at + _S_SEQ]
        if seq & 1:
            raise self._lost(f'slot {slot} is being overwritten; frame of generation {generation} is gone')
        current = words[at + _S_GEN]
        if current != generation:
            raise self._lost(f'slot {slot} holds generation {current}, frame of generation {generation} '
                             f'was overwritten')
        h, w, c, nbytes = words[at + _S_H], words[at + _S_W], words[at + _S_C], words[at + _S_NBYTES]
        if nbytes != h * w * c or nbytes > self.slot_bytes:
            raise self._lost(f'slot {slot} header is inconsistent ({w}x{h}x{c}, {nbytes} bytes)')
        shape = (h, w) if c == 1 else (h, w, c)
        return seq, self._data[slot, :nbytes].reshape(shape)

    def _still(self, slot: int, seq: int, generation: int) -> None:
        if self._words[_SLOT_WORD0 + slot * _SLOT_WORDS + _S_SEQ] != seq:
            raise self._lost(f'slot {slot} was overwritten while frame {generation} was being read (torn copy '
                             f'discarded)')

    def read(self, slot: int, generation: int, out: np.ndarray | None = None) -> np.ndarray:
        """A private copy of the frame (one memcpy), or FrameLost if it is gone or was overwritten meanwhile."""
        seq, src = self._open_slot(slot, generation)
        if out is None:
            out = src.copy()
        else:
            if out.shape != src.shape or out.dtype != np.uint8:
                raise ValueError(f'out has shape {out.shape} {out.dtype}, frame is {src.shape} uint8')
            np.copyto(out, src)
        self._still(slot, seq, generation)
        return out

    @contextmanager
    def view(self, slot: int, generation: int):
        """Zero-copy: a read-only view of the slot, validated when the block ends (FrameLost if the writer
        overwrote it meanwhile, in which case whatever the block computed from it must be discarded).
        Do not keep the view past the block."""
        seq, src = self._open_slot(slot, generation)
        yield src
        self._still(slot, seq, generation)

    def close(self) -> None:
        """Unmap (never unlink: the writer owns the name)."""
        self._hdr = self._slot_hdr = self._data = None
        if self._words is not None:
            self._words.release()
            self._words = None
        _close_mapping(self._mm)

    def __enter__(self) -> 'ShmRingReader':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
