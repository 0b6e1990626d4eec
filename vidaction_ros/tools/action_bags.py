"""The Action stream as a rosbag2 bag, for vidaction-eval: our Action type registered with rosbags from the
installed .msg files, writing a recorded Action stream and reading it back (rosbags only, no rclpy); and
EvalError, which every step of vidaction-eval raises.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

ACTION_TOPIC = '/action'
ACTION_TYPE = 'vidaction_ros/msg/Action'


class EvalError(RuntimeError):
    """The replay could not be run or did not complete; the message says why (and where the log is)."""


# -- the Action type for rosbags -------------------------------------------------------------------------------
def action_typestore():
    """rosbags' Jazzy type store plus every vidaction_ros message, from the installed .msg files (the RIHS01
    hashes then equal rosidl's)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    from ..paths import share_dir
    store = get_typestore(Stores.ROS2_JAZZY)
    msg_dir = share_dir() / 'msg'
    files = sorted(msg_dir.glob('*.msg'))
    if not files:
        raise EvalError(f'no .msg files in {msg_dir}: is vidaction_ros installed (scripts/setup_env.sh)?')
    types = {}
    for path in files:
        types.update(get_types_from_msg(path.read_text(encoding='utf-8'), f'vidaction_ros/msg/{path.stem}'))
    store.register(types)
    return store


def write_action_bag(path: Path, serialized: Sequence[tuple[int, bytes]], storage: str = 'mcap') -> None:
    """(bag time ns, CDR bytes as rclpy serialises them) -> a new rosbag2 bag with one /action topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from ..ingest.bags import BAG_VERSION
    store = action_typestore()
    writer = Writer(path, version=BAG_VERSION,
                    storage_plugin=StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3)
    writer.open()
    try:
        conn = writer.add_connection(ACTION_TOPIC, ACTION_TYPE, typestore=store)
        for stamp_ns, data in serialized:
            writer.write(conn, stamp_ns, data)
    finally:
        writer.close()


def read_action_bag(path: str | Path) -> list:
    """The Actions of a bag written by vidaction-eval, deserialised by rosbags (attribute access like rclpy)."""
    from rosbags.rosbag2 import Reader
    store = action_typestore()
    with Reader(path) as reader:
        conns = [c for c in reader.connections if c.msgtype == ACTION_TYPE]
        return [store.deserialize_cdr(raw, ACTION_TYPE) for _, _, raw in reader.messages(connections=conns)]
