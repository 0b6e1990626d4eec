"""Shared by the A/B benches over bench/e2e.py (overlay.py, intra_process.py): one e2e run in its own process,
and configurations run in interleaved rounds (A, B, A, B, ...) so that a slow moment of the machine does not
land on one configuration only."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

E2E = Path(__file__).with_name('e2e.py')


def parse_args(doc: str, argv=None) -> argparse.Namespace:
    """The A/B benches' command line: --frames per run, --rounds, --json PATH."""
    parser = argparse.ArgumentParser(description=doc.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=300)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--json', default='')
    return parser.parse_args(argv)


def run_e2e(frames: int, extra: list[str]) -> dict:
    """bench/e2e.py --frames N EXTRA in a fresh process; its --json result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, 'e2e.json')
        subprocess.run([sys.executable, str(E2E), '--frames', str(frames), '--json', str(out), *extra],
                       check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))
        return json.loads(out.read_text())


def interleaved(configs: dict[str, list[str]], frames: int, rounds: int, summarise, keys, show) -> tuple[dict, dict]:
    """Run every configuration (name -> extra e2e arguments) once per round, in order. summarise(result) ->
    the figures kept; show(round, name, figures) prints one run. Returns ({name: [figures per round]},
    {name: {key: mean over the rounds}})."""
    runs = {name: [] for name in configs}
    for round_ in range(rounds):
        for name, extra in configs.items():
            figures = summarise(run_e2e(frames, extra))
            runs[name].append(figures)
            show(round_ + 1, name, figures)
    mean = {name: {k: sum(r[k] for r in rs) / len(rs) for k in keys} for name, rs in runs.items()}
    return runs, mean
