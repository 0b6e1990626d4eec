"""bench/device/: the GPU machine's scripts. Their full check needs Python 3.12 with torch
(`bash bench/device/run.sh --cpu-check`, docs/gpu.md); here: they parse, and run.sh without a bundle or with
a Python other than 3.12 stops at once with one line saying what to do."""
import subprocess
import sys
from pathlib import Path

import pytest

DEVICE = Path(__file__).resolve().parents[2] / 'bench' / 'device'


@pytest.mark.parametrize('script', ['build_bundle.sh', 'run.sh'])
def test_the_scripts_parse(script):
    subprocess.run(['bash', '-n', str(DEVICE / script)], check=True)


def test_run_without_its_bundle_says_how_to_build_it(tmp_path):
    # A copy of the scripts in a tree without build/device/bundle.
    scripts = tmp_path / 'bench' / 'device'
    scripts.mkdir(parents=True)
    (scripts / 'run.sh').write_text((DEVICE / 'run.sh').read_text())
    proc = subprocess.run(['bash', str(scripts / 'run.sh')], capture_output=True, text=True, timeout=60,
                          env={'PATH': '/usr/bin:/bin', 'OUT': str(tmp_path / 'out')})
    assert proc.returncode == 2
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and 'build_bundle.sh' in lines[0], proc.stdout + proc.stderr


def test_run_with_another_python_says_the_wheels_are_cp312(tmp_path):
    scripts = tmp_path / 'bench' / 'device'
    scripts.mkdir(parents=True)
    (scripts / 'run.sh').write_text((DEVICE / 'run.sh').read_text())
    (tmp_path / 'build' / 'device' / 'bundle' / 'whl').mkdir(parents=True)
    proc = subprocess.run(['bash', str(scripts / 'run.sh')], capture_output=True, text=True, timeout=60,
                          env={'PATH': '/usr/bin:/bin', 'OUT': str(tmp_path / 'out'), 'PY': sys.executable})
    assert proc.returncode == 2
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and 'not Python 3.12' in lines[0] and 'cp312' in lines[0], proc.stdout + proc.stderr
