"""Launch-free entry point: the same graph as launch/*.launch.py, without the `launch` package.

    vidaction_pipeline --mode composed   [--source PATH] [--lockstep] [--set node.param=value ...]
    vidaction_pipeline --mode processes  [...]

composed  - all four nodes in this process on one executor; frames by reference (inproc transport).
processes - one child process per node (like vidaction.launch.py), each in its own process group,
            signalled as a group on shutdown so nothing is left behind.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .. import graph
from ..paths import config_file

LOCKSTEP_OVERRIDES = {
    # Deterministic replay: every frame, in order, stamped with media time, reliable queues.
    'camera': {'lockstep': True, 'stamp_source': 'media', 'realtime': False},
    'embedder': {'lockstep': True},
    'memory': {'stamps_are_wall_clock': False},
    # A deterministic replay must not depend on wall-clock hiccups: the watchdog guards live runs.
    'policy': {'watchdog_deadline_s': 0.0},
}


def build_parser(prog='vidaction_pipeline') -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    parser.add_argument('--mode', choices=('composed', 'processes'), default='composed')
    parser.add_argument('--params-file', default='', help='ros2 params file (default: config/vidaction.yaml)')
    parser.add_argument('--lockstep', action='store_true',
                        help='deterministic: every frame processed in order at media time (files only)')
    parser.add_argument('--set', action='append', default=[], metavar='NODE.PARAM=VALUE',
                        help='override any node parameter (YAML value), e.g. --set memory.capacity=600')
    for arg in graph.LAUNCH_ARGS:
        parser.add_argument(f'--{arg.name}', default=None, help=f'{arg.description} (default {arg.default!r})')
    return parser


def parse_set(items: list[str], names=tuple(n.name for n in graph.NODES)) -> dict[str, dict[str, object]]:
    """--set NODE.PARAM=VALUE items by node; NODE must be one of the nodes this run starts (`names`)."""
    import yaml
    out: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, raw = item.partition('=')
        node, dot, param = key.partition('.')
        if not sep or not dot or node not in names or not param:
            raise ValueError(f'--set {item!r}: expected NODE.PARAM=VALUE with NODE one of {sorted(names)}')
        out.setdefault(node, {})[param] = yaml.safe_load(raw) if raw else ''
    return out


def collect_overrides(args, composed: bool) -> dict[str, dict[str, object]]:
    values = {a.name: getattr(args, a.name) for a in graph.LAUNCH_ARGS if getattr(args, a.name) is not None}
    overrides = {spec.name: graph.overrides_for(spec.name, values) for spec in graph.NODES}
    if composed:
        overrides['camera']['transport'] = 'inproc'
    for node in overrides.values():
        # Brought up from outside, downstream first: by run_nodes (composed) or lifecycle_manager (processes).
        node['autostart'] = False
    if escalation_wanted(args):
        overrides[graph.ESCALATION.name] = {}   # autostart: it only listens (see graph.ESCALATION)
    if args.lockstep:
        for node, params in LOCKSTEP_OVERRIDES.items():
            overrides[node].update(params)
    for node, params in parse_set(args.set, tuple(overrides)).items():
        overrides[node].update(params)
    return overrides


def params_file(args) -> str:
    return str(Path(args.params_file).resolve()) if args.params_file else str(config_file(graph.PARAMS_FILE))


def node_factories(overrides: dict[str, dict[str, object]]):
    """One factory per graph node, in graph order, each creating the node with its overrides."""
    def factory(spec: graph.NodeSpec):
        from rclpy.parameter import Parameter
        module_name, class_name = spec.factory.split(':')
        node_class = getattr(importlib.import_module(module_name), class_name)
        params = [Parameter(k, value=v) for k, v in overrides[spec.name].items()]
        return node_class(name=spec.name, parameter_overrides=params)
    return [lambda spec=spec: factory(spec) for spec in selected_nodes(overrides)]


def escalation_wanted(args) -> bool:
    return graph.parse_value(args.escalation, 'bool', 'escalation') if args.escalation is not None else False


def selected_nodes(overrides: dict[str, dict[str, object]]) -> tuple[graph.NodeSpec, ...]:
    """The four pipeline nodes, and the optional escalation node when the overrides carry its section."""
    return graph.NODES + ((graph.ESCALATION,) if graph.ESCALATION.name in overrides else ())


def ros_args_for(args) -> list[str]:
    return ['vidaction_pipeline', '--ros-args', '--params-file', params_file(args)]


def run_composed(args, extra_factories=()) -> int:
    from .runtime import run_nodes
    overrides = collect_overrides(args, composed=True)
    return run_nodes(node_factories(overrides) + list(extra_factories), args=ros_args_for(args),
                     bring_up_here=True)


def ros_param_arg(name: str, value) -> str:
    import yaml
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith('...'):
        text = text[:-3].strip()
    return f'{name}:={text}'


def node_command(spec: graph.NodeSpec, params: str, overrides: dict[str, object]) -> list[str]:
    module = spec.factory.split(':')[0]
    cmd = [sys.executable, '-m', module, '--ros-args', '-r', f'__node:={spec.name}', '--params-file', params]
    for key, value in overrides.items():
        cmd += ['-p', ros_param_arg(key, value)]
    return cmd


def manager_command() -> list[str]:
    order = ', '.join(graph.BRINGUP_ORDER)
    return [sys.executable, '-m', graph.MANAGER.factory.split(':')[0], '--ros-args',
            '-r', f'__node:={graph.MANAGER.name}', '-p', f'node_names:=[{order}]']


def run_processes(args) -> int:
    overrides = collect_overrides(args, composed=False)
    params = params_file(args)
    children = []
    # cwd outside any source checkout: a child must import the installed package, not a source tree.
    cwd = tempfile.gettempdir()
    try:
        for spec in selected_nodes(overrides):
            children.append(subprocess.Popen(node_command(spec, params, overrides[spec.name]), cwd=cwd,
                                             start_new_session=True))
        children.append(subprocess.Popen(manager_command(), cwd=cwd, start_new_session=True))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        while not stop.wait(0.5):
            if any(c.poll() is not None for c in children):
                break   # a node died or finished: take the rest down with it, as launch would
        return 0 if stop.is_set() else max(abs(c.returncode or 0) for c in children if c.returncode is not None)
    finally:
        stop_children(children)


def stop_children(children, timeout: float = 10.0) -> None:
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGINT)
    for child in children:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if '--ros-args' in argv:   # ros2 launch appends --ros-args ...; rclpy reads those, argparse must not
        argv = argv[:argv.index('--ros-args')]
    args = build_parser().parse_args(argv)
    try:
        if args.mode == 'composed':
            from .runtime import exit_process
            exit_process(run_composed(args))   # see exit_process: lifecycle teardown at exit aborts
        return run_processes(args)
    except ValueError as err:
        sys.stderr.write(f'vidaction_pipeline: {err}\n')
        return 2


if __name__ == '__main__':
    raise SystemExit(main())
