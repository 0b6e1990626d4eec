"""Process metrics of the pipeline from /proc: its process tree, RSS, fds, threads, mapped /dev/shm files and
frame memory (iceoryx2 sample pools)."""
from __future__ import annotations

import os

SHM_DIR = '/dev/shm'
DDS_PORT_PREFIX = 'fastrtps_port'  # Fast DDS shared-memory port mailboxes: shared per domain, persistent


def is_dds_port_segment(name: str) -> bool:
    """A Fast DDS port mailbox or one of its named semaphores/mutexes (sem.fastrtps_port<N>_mutex): Fast DDS
    leaves these per domain by design, whoever made them, so they are not a leak of the pipeline's."""
    return name.removeprefix('sem.').startswith(DDS_PORT_PREFIX)


def is_shared_by_design(name: str) -> bool:
    """Left in /dev/shm on purpose by a library, for every process of the machine: Fast DDS's port
    mailboxes, and iceoryx2's 16-byte machine-wide counter (iox2_<hash>_node.<version>.global_mgmt)."""
    return is_dds_port_segment(name) or (name.startswith('iox2_') and name.endswith('.global_mgmt'))


# -- process metrics (/proc) ---------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                raw = f.read()
        except OSError:
            continue
        ppid = int(raw[raw.rfind(')') + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    """root and every process below it (processes-mode children have their own sessions, not our group)."""
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f'/proc/{pid}'):
            out.append(pid)
            todo.extend(children.get(pid, []))
    return sorted(out)


def shm_mapped(pid: int | str) -> set[str]:
    """Names of the /dev/shm files a process maps."""
    names = set()
    try:
        with open(f'/proc/{pid}/maps') as f:
            for line in f:
                at = line.find(SHM_DIR + '/')
                if at >= 0:
                    names.add(line[at + len(SHM_DIR) + 1:].rstrip('\n').removesuffix(' (deleted)'))
    except OSError:
        pass
    return names


def process_sample(pids: list[int]) -> dict:
    rss_kb = threads = fds = 0
    shm: set[str] = set()
    alive = []
    for pid in pids:
        try:
            with open(f'/proc/{pid}/status') as f:
                for line in f:
                    if line.startswith('VmRSS:'):
                        rss_kb += int(line.split()[1])
                    elif line.startswith('Threads:'):
                        threads += int(line.split()[1])
            fds += len(os.listdir(f'/proc/{pid}/fd'))
        except OSError:
            continue        # gone: the caller notices through the process count
        shm |= shm_mapped(pid)
        alive.append(pid)
    return {'processes': len(alive), 'rss_mb': rss_kb / 1024.0, 'fds': fds, 'threads': threads,
            'shm': len(shm), 'shm_names': sorted(shm)}


def is_iox_frame_data(name: str) -> bool:
    """An iceoryx2 publisher's sample pool (iox2_<hash>_<id>__<n>.data; not its __mgmt.data)."""
    return name.startswith('iox2_') and name.endswith('.data') and not name.endswith('mgmt.data')


def ring_segments(pids) -> list[str]:
    """The frame memory of this pipeline in /dev/shm: the iceoryx2 sample pools its processes map."""
    rings: set[str] = set()
    for pid in pids:
        rings |= {n for n in shm_mapped(pid) if is_iox_frame_data(n)}
    return sorted(rings)
