"""Alias of `python -m vidaction_ros.perception.backends.clip_export` for existing command lines."""
import sys

from ..perception.backends.clip_export import main

if __name__ == '__main__':
    sys.exit(main())
