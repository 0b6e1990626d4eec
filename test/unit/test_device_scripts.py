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


def run_copy(tmp_path, bundle: bool, **env) -> list[str]:
    """run.sh copied into an empty tree (with an empty bundle when asked), run there: exit code 2 expected;
    its stdout lines."""
    scripts = tmp_path / 'bench' / 'device'
    scripts.mkdir(parents=True)
    (scripts / 'run.sh').write_text((DEVICE / 'run.sh').read_text())
    if bundle:
        (tmp_path / 'build' / 'device' / 'bundle' / 'whl').mkdir(parents=True)
    proc = subprocess.run(['bash', str(scripts / 'run.sh')], capture_output=True, text=True, timeout=60,
                          env={'PATH': '/usr/bin:/bin', 'OUT': str(tmp_path / 'out'), **env})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()


def test_run_without_its_bundle_says_how_to_build_it(tmp_path):
    lines = run_copy(tmp_path, bundle=False)
    assert len(lines) == 1 and 'build_bundle.sh' in lines[0], lines


def test_run_with_another_python_says_the_wheels_are_cp312(tmp_path):
    lines = run_copy(tmp_path, bundle=True, PY=sys.executable)
    assert len(lines) == 1 and 'not Python 3.12' in lines[0] and 'cp312' in lines[0], lines
