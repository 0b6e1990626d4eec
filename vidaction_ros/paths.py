"""Where the package's installed files are (config, launch), with or without an ament environment."""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = 'vidaction_ros'


def share_dir() -> Path:
    """share/vidaction_ros: from the ament index when it is set up, else beside the interpreter's prefix
    (pip/cmake install into a venv), else the source tree (running from a checkout)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        try:
            return Path(get_package_share_directory(PACKAGE))
        except (PackageNotFoundError, KeyError, ValueError, LookupError, OSError):
            pass
    except ImportError:
        pass
    for candidate in (Path(sys.prefix) / 'share' / PACKAGE, Path(__file__).resolve().parent.parent):
        if (candidate / 'config').is_dir():
            return candidate
    raise FileNotFoundError(f'cannot find the {PACKAGE} share directory (config/, launch/)')


def config_file(name: str) -> Path:
    return share_dir() / 'config' / name


def resolve_policy_file(value: str) -> str:
    """'' means the package's default policy."""
    return value if value else str(config_file('policy.yaml'))
