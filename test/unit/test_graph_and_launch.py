"""The launch files, the launch-free entry point and the graph description must agree."""
import ast
import importlib

import pytest
import yaml

from vidaction_ros import graph

from vidaction_ros.nodes import pipeline
from vidaction_ros.paths import share_dir

LAUNCH_DIR = share_dir() / 'launch'


def test_committed_launch_files_are_the_generated_ones():
    for name, render in graph.LAUNCH_FILES.items():
        assert (LAUNCH_DIR / name).read_text() == render(), f'{name} is stale: regenerate it'


def _launch_nodes(tree):
    return [c for c in ast.walk(tree) if isinstance(c, ast.Call)
            and getattr(c.func, 'id', '') in ('Node', 'LifecycleNode')]


def test_multiprocess_launch_has_one_node_per_graph_node_with_params():
    tree = ast.parse((LAUNCH_DIR / 'vidaction.launch.py').read_text())
    calls = _launch_nodes(tree)
    found = {}
    for call in calls:
        kw = {k.arg: k.value for k in call.keywords}
        found[ast.literal_eval(kw['name'])] = (call.func.id, ast.literal_eval(kw['executable']))
    # The four as lifecycle nodes with autostart off, the manager that brings them up in order, and the
    # optional nodes (escalation, overlay), each started only with <name>:=true and bringing itself up.
    assert found == {**{n.name: ('LifecycleNode', n.executable) for n in graph.NODES + graph.OPTIONAL_NODES},
                     graph.MANAGER.name: ('Node', graph.MANAGER.executable)}
    optional = {n.name for n in graph.OPTIONAL_NODES}
    for call in calls:
        kw = {k.arg: k.value for k in call.keywords}
        name = ast.literal_eval(kw['name'])
        if name in optional:
            condition = ast.unparse(kw['condition'])
            for arg in (name,) + graph.ALSO_STARTS.get(name, ()):   # overlay:=true or foxglove:=true
                assert f"LaunchConfiguration('{arg}')" in condition, condition
            assert ast.unparse(kw['parameters']).startswith('[params_file')
            assert 'autostart' not in ast.unparse(kw['parameters'])
        elif call.func.id == 'LifecycleNode':
            overrides = kw['parameters'].elts[1]
            keys = [ast.literal_eval(k) for k in overrides.keys]
            assert ast.literal_eval(overrides.values[keys.index('autostart')]) is False
        else:
            params = ast.literal_eval(kw['parameters'])
            assert params == [{'node_names': list(graph.BRINGUP_ORDER)}]
        # Every node is restarted when it dies, except the manager: its exit (failed bring-up) ends the launch.
        if call.func.id == 'LifecycleNode':
            assert ast.literal_eval(kw['respawn']) is True
            assert ast.literal_eval(kw['respawn_delay']) == graph.RESPAWN_DELAY_S
        else:
            assert 'respawn' not in kw
    handlers = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, 'id', '') == 'OnProcessExit']
    assert len(handlers) == 1 and 'Shutdown(' in ast.unparse(handlers[0])
    assert ast.unparse(handlers[0].keywords[0].value) == 'manager'
    assert set(graph.BRINGUP_ORDER) == {n.name for n in graph.NODES}


def test_every_launch_argument_has_a_description_and_targets_declared_parameters():
    params = yaml.safe_load((share_dir() / 'config' / graph.PARAMS_FILE).read_text())
    for arg in graph.LAUNCH_ARGS:
        assert len(arg.description) > 10
        for node, parameter in arg.targets:
            assert parameter in params[node]['ros__parameters'], f'{arg.name} -> {node}.{parameter}'


def test_params_file_names_only_declared_parameters():
    params = yaml.safe_load((share_dir() / 'config' / graph.PARAMS_FILE).read_text())
    for spec in graph.NODES + graph.OPTIONAL_NODES:
        module = importlib.import_module(spec.factory.split(':')[0])
        declared = {p.name: p for p in module.PARAMS}
        for key, value in params[spec.name]['ros__parameters'].items():
            assert key in declared, f'{spec.name}.{key} is not declared by the node'
            assert type(value) is type(declared[key].default), f'{spec.name}.{key} type'


def test_typed_overrides_from_launch_argument_strings():
    out = graph.overrides_for('camera', {'rate_hz': '15', 'loop': 'true', 'source': '/dev/video0'})
    assert out == {'rate_hz': 15.0, 'loop': True, 'source': '/dev/video0'}
    assert graph.overrides_for('policy', {'backend': 'cpu'}) == {'backend': 'cpu'}
    with pytest.raises(ValueError, match="launch argument 'rate_hz'"):
        graph.overrides_for('camera', {'rate_hz': 'fast'})


def test_pipeline_overrides_composed_lockstep_and_set():
    args = pipeline.build_parser().parse_args(['--lockstep', '--rate_hz', '12', '--set', 'memory.capacity=600'])
    overrides = pipeline.collect_overrides(args, composed=True)
    assert overrides['camera']['transport'] == 'inproc'
    assert overrides['camera']['lockstep'] is True and overrides['camera']['stamp_source'] == 'media'
    assert overrides['camera']['rate_hz'] == 12.0
    assert overrides['memory'] == {'stamps_are_wall_clock': False, 'capacity': 600, 'autostart': False,
                                   'intra_process': True}        # composed: embedding and context by reference
    assert overrides['embedder']['intra_process'] and overrides['policy']['intra_process']
    processes = pipeline.collect_overrides(args, composed=False)
    assert not any(o.get('intra_process') for o in processes.values())
    assert all(o['autostart'] is False for o in overrides.values())   # brought up in order, from outside
    with pytest.raises(ValueError, match='NODE.PARAM=VALUE'):
        pipeline.parse_set(['nonode.x=1'])


def test_escalation_node_joins_only_when_asked():
    plain = pipeline.collect_overrides(pipeline.build_parser().parse_args([]), composed=False)
    assert pipeline.selected_nodes(plain) == graph.NODES
    with pytest.raises(ValueError, match='NODE one of'):   # --set for a node this run does not start
        pipeline.collect_overrides(pipeline.build_parser().parse_args(['--set', 'escalation.low=0.1']), False)
    args = pipeline.build_parser().parse_args(['--escalation', 'true', '--set', 'escalation.low=0.1'])
    overrides = pipeline.collect_overrides(args, composed=False)
    assert pipeline.selected_nodes(overrides) == graph.NODES + (graph.ESCALATION,)
    assert overrides['escalation'] == {'low': 0.1}   # no autostart override: it brings itself up
    with pytest.raises(ValueError, match="launch argument 'escalation'"):
        pipeline.collect_overrides(pipeline.build_parser().parse_args(['--escalation', 'yes']), False)


def test_overlay_node_joins_only_when_asked_with_the_policy_file():
    args = pipeline.build_parser().parse_args(['--overlay', 'true', '--policy_file', '/p.yaml'])
    overrides = pipeline.collect_overrides(args, composed=True)
    assert pipeline.selected_nodes(overrides) == graph.NODES + (graph.OVERLAY,)
    assert overrides['overlay'] == {'policy_file': '/p.yaml'}   # the regions it draws are the policy's
    live = pipeline.collect_overrides(pipeline.build_parser().parse_args(['--foxglove', 'true']), composed=True)
    assert live['overlay'] == {'foxglove': True}                # the live view is served by the overlay node


def test_process_command_line_carries_typed_parameters():
    spec = graph.NODES[0]
    cmd = pipeline.node_command(spec, '/p.yaml', {'rate_hz': 12.0, 'loop': True, 'source': ''})
    assert cmd[cmd.index('--ros-args'):] == ['--ros-args', '-r', '__node:=camera', '--params-file', '/p.yaml',
                                              '-p', 'rate_hz:=12.0', '-p', 'loop:=true', '-p', "source:=''"]


def test_launch_files_load_with_ros2_launch_when_available():
    launch = pytest.importorskip('launch')
    pytest.importorskip('launch_ros')
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    for name in graph.LAUNCH_FILES:
        description = PythonLaunchDescriptionSource(str(LAUNCH_DIR / name)).get_launch_description(
            launch.LaunchContext())
        assert description.entities


def test_demo_and_e2e_bench_refuse_a_mode_they_would_ignore(capsys):
    from vidaction_ros.tools import demo
    with pytest.raises(SystemExit) as exit_info:
        demo.main(['--mode', 'processes'])
    assert exit_info.value.code == 2 and 'vidaction_pipeline --mode processes' in capsys.readouterr().err
