"""Stopping, supervising and recovering, with the real executables as separate processes and the signals that
`ros2 launch` and supervisors send:

- launch's stop: SIGINT, a second SIGINT right after, SIGTERM after its 5 s timeout, SIGKILL 5 s later;
  systemd's: SIGTERM. Every process must log one INFO `stopping (...)` line, send the policy's deactivation
  failsafe, and exit 0 — no traceback, no RCLError, no rosout error, never the SIGKILL.
- a launcher killed outright (SIGKILL) must not leave its nodes running (parent-death signal);
- a node SIGKILLed mid-run is restarted and brought up again (FAILSAFE meanwhile, then decisions);
- a network camera that drops and returns (a real HTTP MPEG-TS stream from ffmpeg on loopback), and one that
  never comes up: FAILSAFE, never silence, and decisions again once the stream is back;
- a configuration error: one line naming the field, exit code 2, no traceback.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import rclpy

from ros_helpers import (ActionCollector, alive, child_running, children_of, free_port, start_node, start_pipeline,
                         wait_until)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAUNCH_SIGTERM_AFTER_S = 5.0      # launch's sigterm_timeout
LAUNCH_SIGKILL_AFTER_S = 5.0      # launch's sigkill_timeout
MODEL_LOAD_S = 240                # first decision: models load in configure (generous: a busy 2-core machine)
NOISE = ('Traceback', 'RCLError', 'Failed to publish log message to rosout', 'terminate called',
         'KeyboardInterrupt', 'process has died')


def decided(a) -> bool:
    return a.trigger != 'watchdog'


def stop_like_launch(procs: dict, sigterm: bool = False) -> dict:
    """Stop processes the way `ros2 launch` does (or systemd: sigterm=True). Returns {name: (exit code, how)},
    how = the last signal it took; 'SIGKILL' means it did not stop on its own."""
    how = {}
    first = signal.SIGTERM if sigterm else signal.SIGINT
    for name, proc in procs.items():
        os.kill(proc.pid, first)
        how[name] = first.name
    if not sigterm:
        for name, proc in procs.items():      # launch's second SIGINT lands while the first is being handled
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)
    for later, sig in ((LAUNCH_SIGTERM_AFTER_S, signal.SIGTERM), (LAUNCH_SIGKILL_AFTER_S, signal.SIGKILL)):
        deadline = time.monotonic() + later
        for name, proc in procs.items():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, sig)
                how[name] = sig.name
    for proc in procs.values():
        proc.wait(30)
    return {name: (proc.returncode, how[name]) for name, proc in procs.items()}


def assert_quiet(text: str) -> None:
    """No traceback or ROS error anywhere, and no ERROR line from the stop on. (Before it, on a loaded machine,
    the watchdog may rightly have reported a stale moment at ERROR: that is the run, not the stop.)"""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if 'stopping (' in line), len(lines))
    bad = [line for i, line in enumerate(lines) if any(n in line for n in NOISE) or
           ('[ERROR]' in line and i >= start)]
    assert not bad, 'noise at shutdown:\n' + '\n'.join(bad[:20])


def vidaction_shm() -> set[str]:
    """Shared memory of this project's and of iceoryx2's (the frame samples, the nodes' and ports' records)."""
    return {n for n in os.listdir('/dev/shm') if n.startswith(('vidaction', 'iox2_'))}


@pytest.fixture
def collector():
    context = rclpy.Context()
    rclpy.init(context=context)
    c = ActionCollector(context=context)
    yield c
    c.close()
    rclpy.try_shutdown(context=context)


def manager_process(log):
    from vidaction_ros.nodes.pipeline import manager_command
    return subprocess.Popen(manager_command(), cwd=tempfile.gettempdir(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(os.environ))


# -- clean stop ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('how', ['launch-sigint-twice', 'sigterm'])
def test_node_processes_stop_cleanly_on_the_signals_launch_and_systemd_send(how, tmp_path, video_path, collector):
    from vidaction_ros.paths import config_file
    params = str(config_file('vidaction.yaml'))
    logs = {}
    procs = {}
    overrides = {'camera': {'source': video_path, 'loop': True}, 'embedder': {}, 'memory': {}, 'policy': {}}
    for name, extra in overrides.items():
        logs[name] = tmp_path / f'{name}.log'
        procs[name] = start_node(name, params, {**extra, 'autostart': False}, open(logs[name], 'w'))
    logs['lifecycle_manager'] = tmp_path / 'manager.log'
    procs['lifecycle_manager'] = manager_process(open(logs['lifecycle_manager'], 'w'))
    try:
        assert collector.wait_for(lambda m: sum(map(decided, m)) >= 5, MODEL_LOAD_S), \
            '\n'.join(p.read_text()[-1500:] for p in logs.values())
    finally:
        result = stop_like_launch(procs, sigterm=how == 'sigterm')
    texts = {name: path.read_text() for name, path in logs.items()}
    for name, (code, last_signal) in result.items():
        assert (code, last_signal) != (code, 'SIGKILL'), f'{name} had to be killed:\n{texts[name][-2000:]}'
        assert code == 0, f'{name} exit code {code}:\n{texts[name][-2000:]}'
        assert_quiet(texts[name])
        assert texts[name].count('stopping (') == 1, f'{name}: one INFO stopping line\n{texts[name][-1500:]}'
    # The controller heard the policy go silent: its deactivation failsafe is the last Action.
    assert collector.wait_for(lambda m: m and m[-1].trigger == 'watchdog' and 'deactivated' in m[-1].reason, 30)


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_composed_pipeline_stops_cleanly(sig, tmp_path, video_path, collector):
    log = tmp_path / 'pipeline.log'
    proc = start_pipeline('--mode', 'composed', '--source', video_path, '--loop', 'true', log_path=str(log))
    try:
        assert collector.wait_for(lambda m: sum(map(decided, m)) >= 5, MODEL_LOAD_S), log.read_text()[-3000:]
    finally:
        # To the group, as a terminal's Ctrl-C or launch does, then once more while it is stopping.
        os.killpg(proc.pid, sig)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        try:
            code = proc.wait(LAUNCH_SIGTERM_AFTER_S + LAUNCH_SIGKILL_AFTER_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f'did not stop within 10 s:\n{log.read_text()[-2000:]}')
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert_quiet(text)
    assert text.count('stopping (') == 1, text[-1500:]
    assert collector.wait_for(lambda m: m and m[-1].trigger == 'watchdog' and 'deactivated' in m[-1].reason, 30)


# -- no orphans ----------------------------------------------------------------------------------------------
def test_killing_the_launcher_stops_every_node(tmp_path, video_path, collector):
    log = tmp_path / 'pipeline.log'
    proc = start_pipeline('--mode', 'processes', '--source', video_path, '--loop', 'true', log_path=str(log))
    nodes = []
    try:
        assert collector.wait_for(lambda m: sum(map(decided, m)) >= 3, MODEL_LOAD_S), log.read_text()[-3000:]
        nodes = children_of(proc.pid)
        assert len(nodes) == 5, nodes          # four nodes and the lifecycle manager
        os.kill(proc.pid, signal.SIGKILL)      # the launcher only: its children are in their own groups
        proc.wait()
        wait_until(lambda: not any(map(alive, nodes)), 30, lambda: f'nodes still running after their launcher '
                   f'died: {[p for p in nodes if alive(p)]}\n{log.read_text()[-2000:]}', interval=0.1)
    finally:
        for pid in filter(alive, nodes):       # whatever outlived a failed test
            os.kill(pid, signal.SIGKILL)


# -- recovery ------------------------------------------------------------------------------------------------
def test_killed_embedder_is_restarted_and_decisions_resume(tmp_path, video_path, collector):
    before = vidaction_shm()
    log = tmp_path / 'pipeline.log'
    proc = start_pipeline('--mode', 'processes', '--source', video_path, '--loop', 'true',
                          '--set', 'policy.watchdog_deadline_s=0.5', log_path=str(log))
    try:
        assert collector.wait_for(lambda m: sum(map(decided, m)) >= 5, MODEL_LOAD_S), log.read_text()[-3000:]
        embedder = child_running(proc.pid, 'embedder_node')
        os.kill(embedder, signal.SIGKILL)
        killed_at = len(collector.messages)
        t_kill = time.monotonic()
        # The controller hears the gap at once (deadline 0.5 s; generous on a busy machine) ...
        assert collector.wait_for(lambda m: any(a.trigger == 'watchdog' for a in m[killed_at:]), 10), \
            log.read_text()[-3000:]
        failsafe_s = time.monotonic() - t_kill
        # ... and prompt-driven decisions come back once the respawned embedder is up again (its model loads
        # again in configure: seconds here, more on a busy 2-core machine).
        assert collector.wait_for(lambda m: any(decided(a) for a in m[killed_at:][
            next((i for i, a in enumerate(m[killed_at:]) if a.trigger == 'watchdog'), 10**9):]), MODEL_LOAD_S), \
            log.read_text()[-3000:]
        resumed_s = time.monotonic() - t_kill
        assert proc.poll() is None, 'the pipeline ended instead of restarting the embedder'
        text = log.read_text()
        assert 'embedder died' in text and 'bringing it up again' in text, text[-3000:]
        print(f'failsafe {failsafe_s:.1f} s after the kill, decisions again after {resumed_s:.1f} s')
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-2000:]
    assert vidaction_shm() <= before, f'shared memory left behind: {sorted(vidaction_shm() - before)}'


def serve_stream(video: str, url: str, log) -> subprocess.Popen:
    """A network camera: ffmpeg serving the video, looped at its own pace, as HTTP MPEG-TS on loopback."""
    return subprocess.Popen(['ffmpeg', '-nostdin', '-loglevel', 'error', '-re', '-stream_loop', '-1', '-i', video,
                             '-vf', 'scale=320:-2', '-c:v', 'mpeg2video', '-q:v', '5', '-f', 'mpegts',
                             '-listen', '1', url], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.skipif(shutil.which('ffmpeg') is None, reason='needs the ffmpeg command (scripts/setup_env.sh)')
def test_network_camera_that_drops_out_gives_failsafe_then_decisions_again(tmp_path, video_path, collector):
    url = f'http://127.0.0.1:{free_port()}/live.ts'
    server_log = open(tmp_path / 'ffmpeg.log', 'w')
    server = serve_stream(video_path, url, server_log)
    log = tmp_path / 'pipeline.log'
    proc = start_pipeline('--mode', 'composed', '--source', url, '--set', 'camera.reconnect_max_s=1.0',
                          log_path=str(log))
    try:
        assert collector.wait_for(lambda m: sum(map(decided, m)) >= 5, MODEL_LOAD_S), log.read_text()[-3000:]
        os.killpg(server.pid, signal.SIGKILL)            # the camera loses power
        server.wait()
        down_at = len(collector.messages)
        assert collector.wait_for(lambda m: sum(a.trigger == 'watchdog' for a in m[down_at:]) >= 3, 30), \
            log.read_text()[-3000:]
        back_at = len(collector.messages)
        server = serve_stream(video_path, url, server_log)   # and comes back
        assert collector.wait_for(lambda m: sum(map(decided, m[back_at:])) >= 3, 120), log.read_text()[-3000:]
        text = log.read_text()
        assert 'capture lost' in text or 'capture reconnecting' in text, text[-3000:]
        assert 'Logger severity' not in text and 'Traceback' not in text, text[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert code == 0, log.read_text()[-2000:]


def test_camera_that_never_comes_up_gives_repeated_failsafe_not_silence(tmp_path, collector):
    url = f'http://127.0.0.1:{free_port()}/live.ts'      # nothing listens there
    startup_s, period_s = 3.0, 0.2
    log = tmp_path / 'pipeline.log'
    proc = start_pipeline('--mode', 'composed', '--source', url, '--set', f'policy.watchdog_startup_s={startup_s}',
                          '--set', f'policy.watchdog_period_s={period_s}', log_path=str(log))
    try:
        assert collector.wait_for(lambda m: len(m) >= 5, MODEL_LOAD_S), log.read_text()[-3000:]
        with collector.changed:
            heard = list(collector.messages)
        assert all(a.trigger == 'watchdog' and a.action == 'FAILSAFE' for a in heard), [a.reason for a in heard]
        assert 'since activation' in heard[0].reason and heard[0].changed
        assert not any(a.changed for a in heard[1:])          # repeated, 'changed' only on the first
        gaps = [(b.header.stamp.sec + b.header.stamp.nanosec * 1e-9) - (a.header.stamp.sec + a.header.stamp.nanosec
                                                                       * 1e-9) for a, b in zip(heard, heard[1:])]
        # Repeated every watchdog_period_s (a timer: never faster, later only on a busy machine).
        assert all(g >= period_s * 0.5 for g in gaps), gaps
        assert 'capture reconnecting' in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-2000:]


# -- one-line failures ---------------------------------------------------------------------------------------
BAD_POLICY = """version: 1
default_action: {name: CONTINUE, code: CONTINUE}
actions:
  - name: STOP
    code: STOP
    prompts: ["a person close to the robot"]
    enter: 0.2
    exit: 0.15
"""


def run_command(args, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def node_cmd(module: str, *params: str) -> list[str]:
    cmd = [sys.executable, '-m', f'vidaction_ros.nodes.{module}', '--ros-args']
    for p in params:
        cmd += ['-p', p]
    return cmd


@pytest.mark.parametrize('case', ['pipeline-composed', 'pipeline-processes', 'policy-node', 'camera-node',
                                  'demo', 'eval-labels', 'calibrate-source', 'bag-play'])
def test_a_configuration_error_is_one_line_and_exit_code_2(case, tmp_path, video_path):
    (tmp_path / 'policy.yaml').write_text(BAD_POLICY)      # relative: run from tmp_path, not the repo
    pipeline = [sys.executable, '-m', 'vidaction_ros.nodes.pipeline']
    cmd, names = {
        'pipeline-composed': (pipeline + ['--mode', 'composed', '--source', video_path, '--policy_file',
                                          'policy.yaml'], 'priority'),
        'pipeline-processes': (pipeline + ['--mode', 'processes', '--source', video_path, '--policy_file',
                                           'policy.yaml'], 'priority'),
        'policy-node': (node_cmd('policy_node', 'policy_file:=policy.yaml'), 'priority'),
        'camera-node': (node_cmd('camera_node', 'transport:=udp'), 'transport'),
        'demo': ([sys.executable, '-m', 'vidaction_ros.tools.demo', '--source', video_path, '--policy_file',
                  'policy.yaml'], 'priority'),
        'eval-labels': ([sys.executable, '-m', 'vidaction_ros.tools.evaluate', 'no_bag'], 'no_bag'),
        'calibrate-source': ([sys.executable, '-m', 'vidaction_ros.tools.calibrate', 'missing.avi', '--policy-file',
                              'policy.yaml'], 'priority'),
        'bag-play': ([sys.executable, '-m', 'vidaction_ros.tools.bag_cli', 'play', 'no_bag'], 'no_bag'),
    }[case]
    result = run_command(cmd, tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-3000:]
    assert 'Traceback' not in out and 'terminate called' not in out, out[-3000:]
    assert names in out, out[-3000:]


# -- the tools stop cleanly too ------------------------------------------------------------------------------
def tool_process(module: str, args: list[str], log, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-m', module, *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(os.environ))


def interrupt_twice(proc: subprocess.Popen, timeout: float = 60) -> int:
    """Ctrl-C twice (to the group, as a terminal does), then wait; fails if it had to be killed."""
    os.killpg(proc.pid, signal.SIGINT)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError('did not stop after two SIGINTs')


def test_demo_stops_cleanly_on_ctrl_c(tmp_path, video_path, collector):
    log = tmp_path / 'demo.log'
    proc = tool_process('vidaction_ros.tools.demo', ['--source', video_path, '--loop', 'true'], open(log, 'w'),
                        tempfile.gettempdir())
    try:
        assert collector.wait_for(lambda m: sum(map(decided, m)) >= 3, MODEL_LOAD_S), log.read_text()[-3000:]
    finally:
        code = interrupt_twice(proc)
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert_quiet(text)
    assert 'stopping (SIGINT)' in text and 'summary' in text, text[-2000:]


def test_eval_stops_cleanly_on_ctrl_c_and_leaves_no_pipeline_behind(tmp_path, collector):
    from bag_helpers import REPLAY_BAG
    log = tmp_path / 'eval.log'
    proc = tool_process('vidaction_ros.tools.evaluate', [str(REPLAY_BAG), '--out', str(tmp_path / 'out'), '--quiet'],
                        open(log, 'w'), tmp_path)
    try:
        # Its pipeline child has started deciding (the eval's replay runs on this test's DDS domain).
        assert collector.wait_for(lambda m: sum(map(decided, m)) >= 3, MODEL_LOAD_S), log.read_text()[-3000:]
        pipeline = [p for p in children_of(proc.pid)]
    finally:
        code = interrupt_twice(proc)
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert 'stopped (SIGINT); no report written' in text and 'Traceback' not in text, text[-2000:]
    assert pipeline and not any(map(alive, pipeline)), 'the replay pipeline outlived vidaction-eval'
