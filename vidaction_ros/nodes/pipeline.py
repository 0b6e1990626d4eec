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
import time
from pathlib import Path

from .. import graph
from ..paths import config_file

LOCKSTEP_OVERRIDES = {
    # Deterministic replay: every frame, in order, stamped with media time, reliable queues.
    'camera': {'lockstep': True, 'stamp_source': 'media', 'realtime': False},
    'embedder': {'lockstep': True},
    'memory': {'stamps_are_wall_clock': False},
    # A deterministic replay must not depend on wall-clock hiccups: the watchdog guards live runs. And every
    # subscriber (the eval recorder, a test) must get every Action, however loaded the machine.
    'policy': {'watchdog_deadline_s': 0.0, 'replay_history': True},
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


INTRA_PROCESS_NODES = ('embedder', 'memory', 'policy')

# Launch arguments that name a file: a relative one is resolved against the caller's folder here, because
# the processes mode runs its nodes in another folder.
PATH_ARGS = ('source', 'policy_file', 'model_path')


def absolute_if_file(value: str) -> str:
    return str(Path(value).resolve()) if value and os.path.exists(value) and not os.path.isabs(value) else value


def collect_overrides(args, composed: bool) -> dict[str, dict[str, object]]:
    values = {a.name: getattr(args, a.name) for a in graph.LAUNCH_ARGS if getattr(args, a.name) is not None}
    for name in PATH_ARGS:
        if name in values:
            values[name] = absolute_if_file(values[name])
    overrides = {spec.name: graph.overrides_for(spec.name, values) for spec in graph.NODES}
    if composed:
        overrides['camera']['transport'] = 'inproc'
        for node in INTRA_PROCESS_NODES:     # embedding and memory/context by reference, DDS only for observers
            overrides[node]['intra_process'] = True
    for node in overrides.values():
        # Brought up from outside, downstream first: by run_nodes (composed) or lifecycle_manager (processes).
        node['autostart'] = False
    for spec in graph.OPTIONAL_NODES:
        if any(optional_wanted(args, name) for name in (spec.name,) + graph.ALSO_STARTS.get(spec.name, ())):
            # autostart (no override): they only listen, so they bring themselves up (see graph.ESCALATION)
            overrides[spec.name] = graph.overrides_for(spec.name, values)
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


def optional_wanted(args, name: str) -> bool:
    value = getattr(args, name)
    return graph.parse_value(value, 'bool', name) if value is not None else False


def selected_nodes(overrides: dict[str, dict[str, object]]) -> tuple[graph.NodeSpec, ...]:
    """The four pipeline nodes, and the optional ones whose section the overrides carry."""
    return graph.NODES + tuple(spec for spec in graph.OPTIONAL_NODES if spec.name in overrides)


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
    """One process per node and the lifecycle manager, supervised like vidaction.launch.py: a node that
    crashes or is killed is started again after graph.RESPAWN_DELAY_S (the manager brings it back up); a node
    that ends by itself (0: end of a replayed file) or fails its configuration (2) ends the pipeline with its
    code, as does the manager (2: bring-up failed)."""
    from .process_stop import install
    overrides = collect_overrides(args, composed=False)
    params = params_file(args)
    stop = install(stop_with_parent=True)
    stop.started()      # nothing slow happens here: a signal only sets the event
    # cwd outside any source checkout: a child must import the installed package, not a source tree.
    cwd = tempfile.gettempdir()
    commands = {spec.name: node_command(spec, params, overrides[spec.name]) for spec in selected_nodes(overrides)}
    commands[graph.MANAGER.name] = manager_command()
    children = {name: _start(cmd, cwd) for name, cmd in commands.items()}
    respawn_at: dict[str, float] = {}
    code = 0
    try:
        while not stop.requested.wait(0.2):
            now = time.monotonic()
            for name, child in list(children.items()):
                rc = child.poll() if child is not None else None
                if child is not None and rc is not None:
                    if name == graph.MANAGER.name or rc in (0, 2):
                        code = rc
                        stop.request(f'{name} exited with code {rc}')
                        break
                    sys.stderr.write(f'vidaction_pipeline: {name} died (exit code {rc}): restarting it in '
                                     f'{graph.RESPAWN_DELAY_S:g} s\n')
                    children[name] = None
                    respawn_at[name] = now + graph.RESPAWN_DELAY_S
                elif child is None and now >= respawn_at[name]:
                    children[name] = _start(commands[name], cwd)
        return code
    finally:
        stop.started()
        stop_children([c for c in children.values() if c is not None])


def _start(cmd: list[str], cwd: str) -> subprocess.Popen:
    # Own process group: a stop is sent to the group, so nothing a node started is left behind.
    return subprocess.Popen(cmd, cwd=cwd, start_new_session=True)


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
