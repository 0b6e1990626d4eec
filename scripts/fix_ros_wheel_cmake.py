#!/usr/bin/env python3
"""Point the ros-jazzy wheels' CMake export files at this machine's Python and numpy headers.

The ros-jazzy-* wheels are built in a manylinux container, and their exported CMake targets (e.g.
share/std_msgs/cmake/export_std_msgs__rosidl_generator_pyExport.cmake) name that container's
include directories:

    /opt/python/cp311-cp311/include/python3.11
    /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include

CMake refuses an imported target whose include directory does not exist, so building our own
interfaces against them fails until those paths are rewritten to sysconfig's include dir and
numpy.get_include(). Reinstalling a wheel brings the old paths back, so this runs before every
build; it is idempotent and only touches files that still hold a foreign path.

Usage: fix_ros_wheel_cmake.py [--prefix PREFIX] [--check] [--quiet]
  (PREFIX defaults to the running interpreter's sys.prefix, i.e. the venv)
"""
import argparse
import os
import re
import sys
import sysconfig

# The wheels' build prefix, for any CPython 3 ABI tag. The numpy pattern must be applied first:
# it is longer and starts with the same prefix.
_NUMPY_INCLUDE = re.compile(
    r'/opt/python/cp3\d+-cp3\d+[a-z]*/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include')
_PYTHON_INCLUDE = re.compile(r'/opt/python/cp3\d+-cp3\d+[a-z]*/include/python3\.\d+')


def _targets():
    """Return this interpreter's (python include dir, numpy include dir)."""
    python_include = sysconfig.get_paths()['include']
    try:
        import numpy
    except ImportError:
        sys.exit('fix_ros_wheel_cmake: numpy is not installed in %s' % sys.prefix)
    return python_include, numpy.get_include()


def fix(prefix, check=False, quiet=False):
    """Rewrite (or with check=True only count) the files under PREFIX/share that need it."""
    python_include, numpy_include = _targets()
    share = os.path.join(prefix, 'share')
    changed = []
    for root, _dirs, files in os.walk(share):
        for name in files:
            if not name.endswith('.cmake'):
                continue
            path = os.path.join(root, name)
            try:
                with open(path, encoding='utf-8') as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError):
                continue
            if '/opt/python/' not in text:
                continue
            new = _NUMPY_INCLUDE.sub(numpy_include, text)
            new = _PYTHON_INCLUDE.sub(python_include, new)
            if new == text:
                continue
            changed.append(path)
            if not check:
                with open(path, 'w', encoding='utf-8') as f:
                    f.write(new)
    if not quiet:
        verb = 'need rewriting' if check else 'rewritten'
        print('fix_ros_wheel_cmake: %d CMake file(s) under %s %s (python include %s, numpy %s)'
              % (len(changed), share, verb, python_include, numpy_include))
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--prefix', default=sys.prefix,
                        help='install prefix holding share/ (default: %(default)s)')
    parser.add_argument('--check', action='store_true',
                        help='change nothing; exit 1 if a file still needs rewriting')
    parser.add_argument('--quiet', action='store_true', help='print nothing')
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.prefix, 'share')):
        sys.exit('fix_ros_wheel_cmake: %s has no share/ directory' % args.prefix)
    if not os.path.isdir(sysconfig.get_paths()['include']):
        print('fix_ros_wheel_cmake: warning: %s does not exist; install the Python development '
              'headers (Debian: python3.11-dev)' % sysconfig.get_paths()['include'],
              file=sys.stderr)
    changed = fix(args.prefix, check=args.check, quiet=args.quiet)
    return 1 if (args.check and changed) else 0


if __name__ == '__main__':
    sys.exit(main())
