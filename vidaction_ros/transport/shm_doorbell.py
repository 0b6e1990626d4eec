"""Doorbell for the shared-memory frame ring: a Unix datagram per frame, writer to readers, without DDS.

Pure core: no ROS imports. The transport module rings it with each FrameRef it publishes on a shm ring and
listens to it in FrameSubscription; the FrameRef still goes over DDS for everyone else (rviz, bags, the
escalation node) and as the fallback.

Sockets. Every process that writes or reads keeps its sockets in a private directory it creates with mode
0700 (tempfile.mkdtemp: a random name, never a pre-existing one) under $VIDACTION_DOORBELL_DIR, else
$XDG_RUNTIME_DIR when it is ours and owner-only, else /dev/shm, else the temp directory:
    <base>/vidaction-bell-<pid-namespace inode>-<pid>-<random>/{w<n>,r<n>}.sock   (sockets chmod 0600)
Only the owner (and root) can reach a socket in such a directory, so every datagram comes from the same user
(the same trust as the 0600 ring). The directory goes away at close / exit; a crashed process's directory is
swept by the next process of the same PID namespace that sees its PID dead.

Protocol. The writer binds w<n>.sock and advertises its path in the ring header (ShmRingWriter.set_doorbell).
A reader binds r<n>.sock and sends REGISTER to it (UNREGISTER at close); the writer drains registrations,
non-blocking, each time it rings. For each frame the writer sends every registered reader one datagram,
non-blocking: header (below) + the store name + an opaque payload (the serialized FrameRef). A reader that
died (ECONNREFUSED: its socket file is unbound; ENOENT: gone) is unregistered; a reader whose queue is full
(EAGAIN) misses that frame, counted, and after STUCK_AFTER misses in a row is unregistered too (it registers
again when it notices, from DDS, that it is being skipped). The writer never blocks on a reader.

Datagram header, little-endian: magic b'VIDABELL', version u16, kind u16 (1 frame, 2 register,
3 unregister), slot u32, generation u64, sequence u64, stamp_ns i64 (header stamp), sent_ns u64
(CLOCK_MONOTONIC when sent: readers measure the bell's own latency), store length u16, then the store name
(UTF-8), then the payload.
"""
from __future__ import annotations

import atexit
import errno
import itertools
import os
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
from dataclasses import dataclass

MAGIC = b'VIDABELL'
VERSION = 1
KIND_FRAME, KIND_REGISTER, KIND_UNREGISTER = 1, 2, 3
_HEADER = struct.Struct('<8sHHIQQqQH')
HEADER_BYTES = _HEADER.size
MAX_DATAGRAM = 64 * 1024          # a FrameRef without pixels serializes to a few hundred bytes
MAX_READERS = 64                  # per writer: a runaway registrant cannot grow it without bound
STUCK_AFTER = 64                  # consecutive EAGAIN drops after which a reader is unregistered
DIR_PREFIX = 'vidaction-bell-'
_SUN_PATH_MAX = 107               # sockaddr_un.sun_path minus the terminating NUL


class DoorbellUnavailable(OSError):
    """The doorbell cannot be set up here (no usable directory, no AF_UNIX): use DDS only."""


@dataclass(frozen=True)
class Ring:
    """One frame datagram as a reader receives it."""
    store: str
    slot: int
    generation: int
    sequence: int
    stamp_ns: int
    sent_ns: int
    received_ns: int
    payload: bytes


def pack(kind: int, store: str = '', slot: int = 0, generation: int = 0, sequence: int = 0, stamp_ns: int = 0,
         payload: bytes = b'', sent_ns: int | None = None) -> bytes:
    raw = store.encode()
    return (_HEADER.pack(MAGIC, VERSION, kind, slot, generation, sequence, stamp_ns,
                         time.monotonic_ns() if sent_ns is None else sent_ns, len(raw)) + raw + payload)


def unpack(data: bytes) -> tuple[int, str, int, int, int, int, int, bytes] | None:
    """(kind, store, slot, generation, sequence, stamp_ns, sent_ns, payload), or None for a foreign datagram."""
    if len(data) < HEADER_BYTES:
        return None
    magic, version, kind, slot, generation, sequence, stamp_ns, sent_ns, length = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or len(data) < HEADER_BYTES + length:
        return None
    try:
        store = data[HEADER_BYTES:HEADER_BYTES + length].decode()
    except UnicodeDecodeError:
        return None
    return kind, store, slot, generation, sequence, stamp_ns, sent_ns, data[HEADER_BYTES + length:]


# -- the private socket directory of this process -----------------------------------------------------------
def _pid_namespace() -> int:
    try:
        return os.stat('/proc/self/ns/pid').st_ino
    except OSError:
        return 0


def _owner_only_dir(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def base_candidates() -> list[str]:
    """Where the per-process directory may go, best first."""
    override = os.environ.get('VIDACTION_DOORBELL_DIR', '')
    if override:
        return [override]                        # an explicit choice: no silent second guess
    out = []
    xdg = os.environ.get('XDG_RUNTIME_DIR', '')
    if xdg and _owner_only_dir(xdg):
        out.append(xdg)
    out += ['/dev/shm', tempfile.gettempdir()]
    return out


def _sweep(base: str) -> None:
    """Remove directories of dead processes of this user and PID namespace (a SIGKILL leaves them)."""
    mine = f'{DIR_PREFIX}{_pid_namespace()}-'
    try:
        entries = os.listdir(base)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(mine):
            continue
        pid = entry[len(mine):].split('-', 1)[0]
        path = os.path.join(base, entry)
        if not pid.isdigit() or int(pid) == os.getpid() or not _owner_only_dir(path):
            continue
        try:
            os.kill(int(pid), 0)
            continue                             # alive (or someone else's): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)


class _ProcessDir:
    """The 0700 directory holding this process's doorbell sockets, created on first use."""

    def __init__(self):
        self.lock = threading.Lock()
        self.path: str | None = None
        self.pid = 0
        self.counter = itertools.count()

    def get(self) -> str:
        with self.lock:
            if self.path is not None and self.pid == os.getpid() and os.path.isdir(self.path):
                return self.path
            errors = []
            for base in base_candidates():
                try:
                    _sweep(base)
                    path = tempfile.mkdtemp(prefix=f'{DIR_PREFIX}{_pid_namespace()}-{os.getpid()}-', dir=base)
                except OSError as err:
                    errors.append(f'{base}: {err}')
                    continue
                os.chmod(path, 0o700)            # mkdtemp already does; explicit, whatever the umask
                if len(os.path.join(path, 'w99999.sock')) > _SUN_PATH_MAX:
                    os.rmdir(path)
                    errors.append(f'{base}: path too long for a Unix socket')
                    continue
                self.path, self.pid = path, os.getpid()
                return path
            raise DoorbellUnavailable(errno.ENOENT, 'no directory for doorbell sockets: ' + '; '.join(errors))

    def socket_path(self, kind: str) -> str:
        return os.path.join(self.get(), f'{kind}{next(self.counter)}.sock')

    def remove(self) -> None:
        with self.lock:
            if self.path is not None and self.pid == os.getpid():
                shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


_DIR = _ProcessDir()
atexit.register(_DIR.remove)


def _bound_socket(kind: str) -> tuple[socket.socket, str]:
    try:
        path = _DIR.socket_path(kind)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    except OSError as err:
        raise DoorbellUnavailable(err.errno or errno.EINVAL, f'doorbell socket: {err}') from None
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise DoorbellUnavailable(err.errno or errno.EINVAL, f'doorbell socket {path}: {err}') from None
    return sock, path


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- writer ---------------------------------------------------------------------------------------------------
class DoorbellWriter:
    """The ring's side: knows the registered readers and sends each one datagram per frame. One thread."""

    def __init__(self):
        self.sock, self.path = _bound_socket('w')
        self.readers: dict[str, int] = {}        # reader socket path -> consecutive EAGAIN drops
        self.sent = 0                            # datagrams delivered to a reader's queue
        self.dropped = 0                         # datagrams a reader missed (queue full, or it died)
        self.unregistered = 0                    # readers removed because they died or were stuck
        self.closed = False
        self._drained = 0.0                      # time.monotonic() of the last registration drain

    def _drain_registrations(self) -> None:
        self._drained = time.monotonic()
        while True:
            try:
                data, address = self.sock.recvfrom(512)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            parsed = unpack(data)
            if parsed is None or not isinstance(address, str) or not address:
                continue                         # foreign, or from an unbound socket we could not answer
            if parsed[0] == KIND_REGISTER:
                if address in self.readers or len(self.readers) < MAX_READERS:
                    self.readers[address] = 0
            elif parsed[0] == KIND_UNREGISTER:
                self.readers.pop(address, None)

    def ring(self, store: str, slot: int, generation: int, sequence: int, stamp_ns: int,
             payload: bytes = b'', drain: bool = True) -> int:
        """Tell every registered reader about one frame; returns how many got it. Never blocks.
        drain=False: the caller just did (poll_registrations)."""
        if self.closed:
            return 0
        if drain:
            self._drain_registrations()
        if not self.readers:
            return 0
        data = pack(KIND_FRAME, store, slot, generation, sequence, stamp_ns, payload)
        delivered = 0
        for address in list(self.readers):
            try:
                self.sock.sendto(data, address)
            except (BlockingIOError, InterruptedError):
                self.dropped += 1                # its queue is full: it misses this frame, DDS still has it
                misses = self.readers[address] + 1
                if misses >= STUCK_AFTER:
                    self._forget(address)
                else:
                    self.readers[address] = misses
                continue
            except OSError:
                # ECONNREFUSED (nobody bound: it died), ENOENT (it closed), EACCES, ... : it is gone
                self.dropped += 1
                self._forget(address)
                continue
            self.readers[address] = 0
            delivered += 1
        self.sent += delivered
        return delivered

    def poll_registrations(self, max_age_s: float = 0.0) -> bool:
        """Take in pending (un)registrations (unless it was done less than max_age_s ago and someone is
        registered: a syscall saved per frame, a new reader heard of at most that much later); whether a
        ring would reach anyone now."""
        if self.closed:
            return False
        if not (self.readers and max_age_s > 0 and time.monotonic() - self._drained < max_age_s):
            self._drain_registrations()
        return bool(self.readers)

    def _forget(self, address: str) -> None:
        self.readers.pop(address, None)
        self.unregistered += 1

    def stats(self) -> dict:
        return {'readers': len(self.readers), 'sent': self.sent, 'dropped': self.dropped,
                'unregistered': self.unregistered}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()
            _unlink(self.path)

    def __enter__(self) -> 'DoorbellWriter':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- reader ---------------------------------------------------------------------------------------------------
class DoorbellReader:
    """A reader's socket: registers with writers, receives their frame datagrams. Thread-safe send side;
    receive from one thread."""

    def __init__(self):
        self.sock, self.path = _bound_socket('r')
        self.writers: dict[str, float] = {}      # writer socket path -> monotonic time of the last REGISTER
        self.received = 0
        self.closed = False
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def register(self, writer_path: str) -> bool:
        """Ask a writer to ring us (idempotent). False when it is unreachable (gone, or no such socket)."""
        return self._tell(writer_path, KIND_REGISTER)

    def unregister(self, writer_path: str) -> bool:
        return self._tell(writer_path, KIND_UNREGISTER)

    def _tell(self, writer_path: str, kind: int) -> bool:
        with self._lock:
            if self.closed:
                return False
            try:
                self.sock.sendto(pack(kind), writer_path)
            except OSError:
                self.writers.pop(writer_path, None)
                return False
            if kind == KIND_REGISTER:
                self.writers[writer_path] = time.monotonic()
            else:
                self.writers.pop(writer_path, None)
            return True

    def receive(self) -> Ring | None:
        """One frame datagram if one is queued, else None (non-blocking); foreign datagrams are skipped."""
        while True:
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return None
            received_ns = time.monotonic_ns()
            parsed = unpack(data)
            if parsed is None or parsed[0] != KIND_FRAME:
                continue
            self.received += 1
            _, store, slot, generation, sequence, stamp_ns, sent_ns, payload = parsed
            return Ring(store, slot, generation, sequence, stamp_ns, sent_ns, received_ns, payload)

    def close(self) -> None:
        """Unregister from every writer (best effort), close and remove the socket."""
        with self._lock:
            if self.closed:
                return
            writers = list(self.writers)
        for path in writers:
            self.unregister(path)
        with self._lock:
            self.closed = True
            self.sock.close()
            _unlink(self.path)

    def __enter__(self) -> 'DoorbellReader':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def directory() -> str:
    """This process's doorbell directory (created on first use)."""
    return _DIR.get()
