"""The one description of the node graph. Launch files and the launch-free entry point come from it.

`python -m vidaction_ros.graph --write launch/` regenerates launch/*.launch.py; a test fails when the
committed launch files differ from what this module generates, so the two can never drift apart.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .perception.backends import CHOICES as BACKEND_CHOICES, DETECTOR_CHOICES

PACKAGE = 'vidaction_ros'
PARAMS_FILE = 'vidaction.yaml'


@dataclass(frozen=True)
class NodeSpec:
    name: str                 # node name = section of config/vidaction.yaml
    executable: str           # installed in lib/vidaction_ros/
    factory: str              # module:Class for in-process composition


@dataclass(frozen=True)
class LaunchArg:
    name: str
    default: str
    description: str
    targets: tuple[tuple[str, str], ...]    # (node name, parameter name) it sets
    value_type: str = 'str'                 # str | float | int | bool: launch_ros ParameterValue type
    choices: tuple[str, ...] = field(default=())


NODES = (
    NodeSpec('camera', 'camera_node', 'vidaction_ros.nodes.camera_node:CameraNode'),
    NodeSpec('embedder', 'embedder_node', 'vidaction_ros.nodes.embedder_node:EmbedderNode'),
    NodeSpec('memory', 'memory_node', 'vidaction_ros.nodes.memory_node:MemoryNode'),
    NodeSpec('policy', 'policy_node', 'vidaction_ros.nodes.policy_node:PolicyNode'),
)
# The four are lifecycle nodes. Launch files and the processes mode start them with autostart:=false and
# this manager configures, then activates them in BRINGUP_ORDER: downstream first, so every consumer
# listens before its producer sends (composed mode does the same in-process).
MANAGER = NodeSpec('lifecycle_manager', 'lifecycle_manager', 'vidaction_ros.nodes.lifecycle_manager:LifecycleManager')
BRINGUP_ORDER = ('memory', 'policy', 'embedder', 'camera')
# A node process that crashes or is killed is started again after this delay (launch `respawn`, and the
# processes mode); the manager notices it back unconfigured and brings it up again, and the policy's watchdog
# covers the gap with FAILSAFE. The manager itself is not respawned: when bring-up fails (a configuration
# error) it exits 2 and takes the launch down, instead of retrying a bad file forever.
RESPAWN_DELAY_S = 2.0
# Optional, off the hot path (launch argument escalation:=true, or --escalation true): a second opinion on
# protective or unsure Actions. It only listens, so it brings itself up (autostart) and the manager, whose
# list must not wait for a node that was not started, leaves it alone.
ESCALATION = NodeSpec('escalation', 'escalation_node', 'vidaction_ros.nodes.escalation_node:EscalationNode')
# Optional, off the hot path (overlay:=true, or --overlay true): the working frame with regions, detections,
# scores and the action drawn on it, as a JPEG CompressedImage on overlay/compressed. Brings itself up.
OVERLAY = NodeSpec('overlay', 'overlay_node', 'vidaction_ros.nodes.overlay_node:OverlayNode')
OPTIONAL_NODES = (ESCALATION, OVERLAY)    # each started by the bool launch argument of its name

LAUNCH_ARGS = (
    LaunchArg('source', '/usr/share/doc/opencv-doc/examples/data/vtest.avi',
              'video file, V4L2 device (/dev/video0), rtsp:// URL, or "topic" for a sensor_msgs/Image input',
              (('camera', 'source'),)),
    LaunchArg('image_topic', 'image_raw', 'input image topic when source:=topic', (('camera', 'image_topic'),)),
    LaunchArg('loop', 'false', 'restart a video file at its end', (('camera', 'loop'),), 'bool'),
    LaunchArg('rate_hz', '10.0', 'reasoning rate in Hz (frames handed to the embedder per second)',
              (('camera', 'rate_hz'),), 'float'),
    LaunchArg('policy_file', '', 'policy YAML (empty = the package default config/policy.yaml)',
              (('embedder', 'policy_file'), ('policy', 'policy_file'), ('overlay', 'policy_file'))),
    LaunchArg('backend', 'cpu', 'embedding backend, the same for embedder and policy (auto picks the fastest '
              'the machine and model_path allow)',
              (('embedder', 'backend'), ('policy', 'backend')), choices=BACKEND_CHOICES),
    LaunchArg('model_path', '', 'CLIP/SigLIP model directory: transformers (clip_hf, torch_cuda) or an ONNX '
              'export (clip_onnx, tensorrt)',
              (('embedder', 'model_path'), ('policy', 'model_path'))),
    LaunchArg('device', '', 'cpu or cuda for clip_onnx / clip_hf / torch_cuda (empty = backend default)',
              (('embedder', 'device'), ('policy', 'device')), choices=('', 'cpu', 'cuda')),
    LaunchArg('precision', '', 'torch_cuda: fp16/bf16/fp32; tensorrt: fp16/int8/fp8/fp32 (empty = fp16 on GPU)',
              (('embedder', 'precision'), ('policy', 'precision')),
              choices=('', 'fp32', 'fp16', 'bf16', 'int8', 'fp8')),
    LaunchArg('detector', 'coco', 'cpu backend: object detector for embedder and policy: coco (80 COCO classes), hog '
              '(upright people only, cheaper) or none',
              (('embedder', 'detector'), ('policy', 'detector')), choices=DETECTOR_CHOICES),
    LaunchArg('escalation', 'false', 'also start the escalation node: a second opinion on protective or unsure '
              'Actions, published on escalation, never delaying the Action', (), 'bool'),
    LaunchArg('overlay', 'false', 'also start the overlay node: JPEG of the frame with regions, detections, '
              'scores and the action on overlay/compressed (rviz, rqt_image_view, Foxglove)', (), 'bool'),
    LaunchArg('foxglove', 'false', 'live Foxglove view: the overlay node also serves a Foxglove WebSocket on '
              'localhost (port: overlay.foxglove_port, 8765) with the overlay, Actions and scores; starts the '
              'overlay node', (('overlay', 'foxglove'),), 'bool'),
    LaunchArg('interop_image_topic', '', 'also publish frames as sensor_msgs/Image on this topic (rviz, bags)',
              (('camera', 'interop_image_topic'),)),
)


def overrides_for(node: str, values: dict[str, str]) -> dict[str, object]:
    """Typed parameter overrides of one node from launch-argument strings (launch-free route)."""
    out = {}
    for arg in LAUNCH_ARGS:
        if arg.name not in values:
            continue
        raw = values[arg.name]
        for target_node, parameter in arg.targets:
            if target_node == node:
                out[parameter] = parse_value(raw, arg.value_type, arg.name)
    return out


def parse_value(raw: str, value_type: str, name: str):
    try:
        if value_type == 'float':
            return float(raw)
        if value_type == 'int':
            return int(raw)
        if value_type == 'bool':
            if raw.lower() not in ('true', 'false'):
                raise ValueError(raw)
            return raw.lower() == 'true'
        return raw
    except ValueError:
        raise ValueError(f"launch argument '{name}': expected {value_type}, got {raw!r}") from None


# -- launch file generation -----------------------------------------------------------------------------------
HEADER = '''# GENERATED by `python -m vidaction_ros.graph --write launch/` from vidaction_ros/graph.py. Do not edit:
# change the graph description and regenerate (a test checks the two agree).
'''


def _arg_decls() -> str:
    """DeclareLaunchArgument lines shared by both launch files: params_file, namespace, then LAUNCH_ARGS."""
    lines = [f"""        DeclareLaunchArgument('params_file',
                              default_value=PathJoinSubstitution([FindPackageShare({PACKAGE!r}), 'config', {PARAMS_FILE!r}]),
                              description='ros2 params file with a section per node'),
        DeclareLaunchArgument('namespace', default_value='', description='namespace of all four nodes'),"""]
    for arg in LAUNCH_ARGS:
        choices = f', choices={list(arg.choices)!r}' if arg.choices else ''
        lines.append(f'        DeclareLaunchArgument({arg.name!r}, default_value={arg.default!r},\n'
                     f'                              description={arg.description!r}{choices}),')
    return '\n'.join(lines)


def _param_value(arg: LaunchArg) -> str:
    if arg.value_type == 'str':
        return f'ParameterValue(LaunchConfiguration({arg.name!r}), value_type=str)'
    return f'ParameterValue(LaunchConfiguration({arg.name!r}), value_type={arg.value_type})'


# Launch arguments that also start an optional node (foxglove:=true needs the overlay node that serves it).
ALSO_STARTS = {'overlay': ('foxglove',)}


def _start_condition(name: str) -> str:
    args = (name,) + ALSO_STARTS.get(name, ())
    if len(args) == 1:
        return f'IfCondition(LaunchConfiguration({name!r}))'
    parts = ', " or ", '.join(f"\"'\", LaunchConfiguration({a!r}), \"'.lower() == 'true'\"" for a in args)
    return f'IfCondition(PythonExpression([{parts}]))'


def render_multiprocess() -> str:
    nodes = []
    for spec in NODES:
        overrides = [f'{param!r}: {_param_value(arg)}' for arg in LAUNCH_ARGS
                     for node, param in arg.targets if node == spec.name]
        overrides.append("'autostart': False")
        override_text = '{' + ', '.join(overrides) + '}'
        nodes.append(f'''        LifecycleNode(package={PACKAGE!r}, executable={spec.executable!r}, name={spec.name!r},
                      namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
                      respawn=True, respawn_delay={RESPAWN_DELAY_S!r},
                      parameters=[params_file, {override_text}]),''')
    nodes.append('''        manager,
        # Bring-up failed (exit 2: a configuration error, logged by the node) or the manager died: stop the
        # whole launch rather than leave a half pipeline running.
        RegisterEventHandler(OnProcessExit(target_action=manager, on_exit=[
            Shutdown(reason='lifecycle_manager exited: the graph is not supervised')])),''')
    for spec in OPTIONAL_NODES:
        overrides = [f'{param!r}: {_param_value(arg)}' for arg in LAUNCH_ARGS
                     for node, param in arg.targets if node == spec.name]
        params = 'params_file' + (', {' + ', '.join(overrides) + '}' if overrides else '')
        nodes.append(f'''        LifecycleNode(package={PACKAGE!r}, executable={spec.executable!r}, name={spec.name!r},
                      namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
                      respawn=True, respawn_delay={RESPAWN_DELAY_S!r},
                      parameters=[{params}], condition={_start_condition(spec.name)}),''')
    return f'''{HEADER}"""Four lifecycle-node processes, camera -> embedder -> memory -> policy, brought up in order
(downstream first) by lifecycle_manager. Frames cross processes through a shared-memory ring. With
escalation:=true an optional node gives second opinions off the hot path; with overlay:=true another draws
what the pipeline sees and decides on overlay/compressed.

    ros2 launch {PACKAGE} vidaction.launch.py source:=/dev/video0 rate_hz:=15.0
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, RegisterEventHandler, Shutdown
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    params_file = LaunchConfiguration('params_file')
    manager = Node(package={PACKAGE!r}, executable={MANAGER.executable!r}, name={MANAGER.name!r},
                   namespace=LaunchConfiguration('namespace'), output='screen', emulate_tty=True,
                   parameters=[{{'node_names': {list(BRINGUP_ORDER)!r}}}])
    return LaunchDescription([
{_arg_decls()}
{chr(10).join(nodes)}
    ])
'''


def render_composed() -> str:
    args = ''.join(f"\n                   '--{arg.name}', LaunchConfiguration({arg.name!r})," for arg in LAUNCH_ARGS)
    return f'''{HEADER}"""All four nodes in one process on one executor: frames pass by reference (zero copies).

    ros2 launch {PACKAGE} vidaction_composed.launch.py source:=/dev/video0
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    return LaunchDescription([
{_arg_decls()}
        # No `name=`: a node-name remap would rename all four nodes of the process to one name.
        Node(package={PACKAGE!r}, executable='vidaction_pipeline', namespace=LaunchConfiguration('namespace'),
             output='screen', emulate_tty=True, respawn=True, respawn_delay={RESPAWN_DELAY_S!r},
             arguments=['--mode', 'composed', '--params-file', LaunchConfiguration('params_file'),{args}
                        ]),
    ])
'''


LAUNCH_FILES = {'vidaction.launch.py': render_multiprocess, 'vidaction_composed.launch.py': render_composed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description='Generate the launch files from the graph description.')
    parser.add_argument('--write', metavar='DIR', help='write launch files into DIR')
    parser.add_argument('--check', metavar='DIR', help='exit 1 if launch files in DIR differ from the generated')
    args = parser.parse_args(argv)
    stale = []
    for name, render in LAUNCH_FILES.items():
        text = render()
        if args.write:
            Path(args.write, name).write_text(text)
        if args.check and (not Path(args.check, name).is_file() or Path(args.check, name).read_text() != text):
            stale.append(name)
    if stale:
        sys.stderr.write(f'stale launch files: {stale}; run python -m vidaction_ros.graph --write launch/\n')
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
