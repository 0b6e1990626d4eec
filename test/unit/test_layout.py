"""The package's shape is a rule, not a habit: dependencies point one way and pure cores import no ROS.

Layers, lowest first (docs/architecture.md draws them). A module may import its own layer and those below,
never one above:

    shared helpers   stats, paths (pure); qos, params, diagnostics (ROS helpers); msg, srv (generated)
    ingest/          frame sources, bags, image decoding, rate, scene gate
    conversions      ROS messages <-> the cores' types (uses ingest's image decoding)
    transport/       frames between nodes
    perception/      backends, detectors, text model, regions
    memory/          the temporal window
    policy/          spec, scoring, engine, watchdog
    escalation/      a second opinion off the hot path
    graph            the one description of the node graph
    nodes/           rclpy shells, lifecycle, the launch-free pipeline
    tools/           command-line programs

The import graph is read from the source with `ast` (function-level imports included), so a lazy import
cannot hide a wrong-way dependency; purity is also checked by importing every pure module in a fresh
interpreter and looking for rclpy in sys.modules, which catches an import through a third module.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = 'vidaction_ros'
SOURCE = Path(__file__).resolve().parents[2] / PACKAGE

LAYERS = [
    ('stats', 'paths', 'qos', 'params', 'diagnostics', 'msg', 'srv'),
    ('ingest',),
    ('conversions',),
    ('transport',),
    ('perception',),
    ('memory',),
    ('policy',),
    ('escalation',),
    ('overlay',),
    ('graph',),
    ('nodes',),
    ('tools', 'backends'),   # backends/: the old `python -m vidaction_ros.backends.clip_export` command line
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}

# The only modules allowed to import rclpy or ROS messages: the ROS helpers, the node shells, the tools
# that start nodes or read Action messages, and the transport's node-facing half.
ROS_MODULES = {
    'qos', 'params', 'diagnostics', 'conversions', 'transport.frame_transport', 'transport.frame_sender',
    'transport.frame_subscription', 'transport.frame_access', 'transport.local_frames', 'transport.iox_refs',
    'tools.bag_cli', 'tools.bag_player', 'tools.demo', 'tools.evaluate', 'tools.replay',
}
ROS_IMPORTS = ('rclpy', 'rosidl_runtime_py', 'builtin_interfaces', 'std_msgs', 'sensor_msgs', 'diagnostic_msgs',
               'lifecycle_msgs', 'rcl_interfaces', f'{PACKAGE}.msg', f'{PACKAGE}.srv')


def _modules() -> dict[str, Path]:
    """Dotted name (without the package prefix) -> source file, for every module of the package."""
    out = {}
    for path in sorted(SOURCE.rglob('*.py')):
        rel = path.relative_to(SOURCE).with_suffix('')
        parts = list(rel.parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        if parts:
            out['.'.join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names a module imports (relative imports resolved), from anywhere in the file."""
    is_package = path.name == '__init__.py'
    here = [PACKAGE] + name.split('.')
    package = here if is_package else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ''
            found.add(module)
            # `from . import qos` imports a module, not a name
            found.update(f'{module}.{alias.name}' for alias in node.names)
    return found


def _unit(dotted: str) -> str | None:
    """The layer unit of an absolute module name inside the package, or None outside it."""
    parts = dotted.split('.')
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    return parts[1]


MODULES = _modules()


def test_every_module_belongs_to_a_layer():
    unknown = sorted({name.split('.')[0] for name in MODULES} - set(RANK))
    assert not unknown, f'modules outside every layer (add them to LAYERS and docs/architecture.md): {unknown}'


def test_dependencies_point_down():
    wrong = []
    for name, path in MODULES.items():
        own = name.split('.')[0]
        for imported in _imports(name, path):
            unit = _unit(imported)
            if unit is None or unit not in RANK or unit == own:
                continue
            if RANK[unit] > RANK[own]:
                wrong.append(f'{name} imports {imported} ({own} is below {unit})')
    assert not wrong, '\n'.join(sorted(set(wrong)))


def test_only_the_ros_shells_import_ros():
    wrong = []
    for name, path in MODULES.items():
        if name in ROS_MODULES or name.split('.')[0] == 'nodes':
            continue
        for imported in _imports(name, path):
            if any(imported == r or imported.startswith(r + '.') for r in ROS_IMPORTS):
                wrong.append(f'{name} imports {imported}')
    assert not wrong, 'pure cores importing ROS:\n' + '\n'.join(sorted(set(wrong)))


def test_the_layer_check_sees_a_wrong_way_import(tmp_path):
    # The checker itself must be able to fail: a memory module importing the policy is caught.
    fake = tmp_path / 'memory' / 'bad.py'
    fake.parent.mkdir()
    fake.write_text('def f():\n    from ..policy import PolicyEngine\n')
    imported = _imports('memory.bad', fake)
    assert f'{PACKAGE}.policy' in imported and RANK[_unit(f'{PACKAGE}.policy')] > RANK['memory']


PURE_STAGES = ['ingest', 'transport', 'perception', 'memory', 'policy', 'escalation']


@pytest.mark.parametrize('stage', PURE_STAGES)
def test_pure_modules_pull_in_no_rclpy(stage):
    """Import each pure module of a stage in a fresh interpreter: rclpy must not get loaded, even indirectly."""
    names = [f'{PACKAGE}.{n}' for n in MODULES if n.split('.')[0] == stage and n not in ROS_MODULES]
    code = ('import importlib, json, sys\n'
            'bad = {}\n'
            f'for name in {names!r}:\n'
            '    importlib.import_module(name)\n'
            '    ros = sorted(m for m in sys.modules if m == "rclpy" or m.endswith(".msg"))\n'
            '    if ros:\n'
            '        bad[name] = ros\n'
            '        break\n'
            'print(json.dumps(bad))\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not bad, f'{stage}: importing these loaded ROS modules: {bad}'
