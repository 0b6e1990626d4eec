"""Shared fixtures. DDS stays on this machine (loopback discovery) with a domain id of its own per run."""
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')

# VIDACTION_TEST_VIDEO: the same file elsewhere (the GPU machine has no opencv-doc; bench/device/run.sh).
VIDEO = Path(os.environ.get('VIDACTION_TEST_VIDEO', '/usr/share/doc/opencv-doc/examples/data/vtest.avi'))
DATA = Path(__file__).resolve().parent / 'data'
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='session')
def video_path() -> str:
    if not VIDEO.is_file():
        pytest.fail(f'demo video missing: {VIDEO} (apt-get install opencv-doc; scripts/setup_env.sh does it)')
    return str(VIDEO)


def read_frame(index: int, size=(640, 480)):
    import cv2
    cap = cv2.VideoCapture(str(VIDEO))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    assert ok, f'cannot read frame {index} of {VIDEO}'
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if size else frame


@pytest.fixture
def context():
    """A fresh rclpy context for one test (its own DDS participant), shut down afterwards."""
    import rclpy
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def load_bench(name: str):
    """A bench script (bench/<name>.py) as a module, for tests of its pure parts (bench/ is not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'bench_{name}', REPO / 'bench' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
