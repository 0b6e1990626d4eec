"""The real offline model on real frames. Expectations come from the hand labels (test/data) and from
first principles about sentence semantics, not from the model's own output."""
import numpy as np
import pytest

from vidaction_ros.perception.backends import BackendUnavailable, create_backend
from vidaction_ros.policy import load_policy, score_margin
from vidaction_ros.paths import config_file

from conftest import read_frame

INSIDE_SPAN_FRAME = 650    # 65.0 s: labelled, a person walking on the near-zone grass
OUTSIDE_SPAN_FRAME = 100   # 10.0 s: labelled, people on the road only


@pytest.fixture(scope='module')
def backend():
    b = create_backend('cpu')
    b.activate()
    yield b
    b.deactivate()


@pytest.fixture(scope='module')
def policy():
    return load_policy(str(config_file('policy.yaml')))


def test_text_vectors_are_normalised_and_semantic(backend):
    v = backend.embed_texts(['a dog', 'a puppy', 'a truck'])
    assert v.shape == (3, backend.dim) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_person_in_near_zone_is_seen_only_when_labelled(backend, policy):
    regions = list(policy.regions.values())
    rule = policy.actions[0]
    prompts, contrast = backend.embed_texts(list(rule.prompts)), backend.embed_texts(list(rule.contrast))
    inside, outside = backend.embed_images([read_frame(INSIDE_SPAN_FRAME), read_frame(OUTSIDE_SPAN_FRAME)], regions)
    assert inside.regions['near_zone'].detections >= 1
    assert outside.regions['near_zone'].detections == 0
    score_in, _ = score_margin(inside.regions['near_zone'].vector, prompts, contrast)
    score_out, _ = score_margin(outside.regions['near_zone'].vector, prompts, contrast)
    assert score_in >= rule.enter > score_out


def test_detections_come_with_their_regions(backend, policy):
    regions = list(policy.regions.values())
    inside, outside = backend.embed_images([read_frame(INSIDE_SPAN_FRAME), read_frame(OUTSIDE_SPAN_FRAME)], regions)
    # Frame 650: one person on the near-zone grass, five on the road (test_coco_detector has the boxes).
    near = [d for d in inside.detections if d.label == 'person' and d.regions == ('near_zone',)]
    assert len(near) == 1 and near[0].y1 > 0.8
    assert sum(d.label == 'person' for d in inside.detections) >= 5
    assert not any('near_zone' in d.regions for d in outside.detections if d.label == 'person')
    assert any(c.startswith('person x') for c in inside.top_concepts)


def test_objects_other_than_people_answer_free_text_by_region(backend):
    # A region around the parked white van (top right of frame 650) and the near zone with the walking woman.
    # First principles: a vehicle prompt must beat a person prompt where the van is, and the reverse where the
    # woman is; no prompt names a detector class (no keyword matching).
    from vidaction_ros.perception.regions import Region
    van = Region('kerb', ((0.82, 0.04), (1.0, 0.04), (1.0, 0.2), (0.82, 0.2)))
    near = Region('near', ((0.0, 0.47), (1.0, 0.90), (1.0, 1.0), (0.0, 1.0)))
    result = backend.embed_images([read_frame(650)], [van, near])[0]
    vehicle, person = backend.embed_texts(['a vehicle parked by the road', 'someone walking'])
    assert result.regions['kerb'].vector @ vehicle > result.regions['kerb'].vector @ person
    assert result.regions['near'].vector @ person > result.regions['near'].vector @ vehicle


def test_a_missing_detector_file_fails_activation_naming_it(tmp_path):
    b = create_backend('cpu', detector_dir=str(tmp_path))
    with pytest.raises(BackendUnavailable, match=f'{tmp_path}/yolov3-tiny.weights'):
        b.activate()


def test_the_detector_choice_names_the_model():
    ids = {d: create_backend('cpu', detector=d).model_id for d in ('coco', 'hog', 'none')}
    assert len(set(ids.values())) == 3 and 'yolov3-tiny' in ids['coco'] and 'hog' in ids['hog']
    with pytest.raises(ValueError, match='detector must be one of coco, hog, none'):
        create_backend('cpu', detector='yolo')


def test_vectors_are_unit_length_deterministic_and_per_region(backend, policy):
    regions = list(policy.regions.values())
    frame = read_frame(300)
    a, b = backend.embed_images([frame], regions)[0], backend.embed_images([frame], regions)[0]
    assert a.vector.shape == (backend.dim,) and abs(np.linalg.norm(a.vector) - 1) < 1e-5
    assert np.allclose(a.vector, b.vector) and set(a.regions) == {'near_zone'}


@pytest.mark.parametrize('frame,message', [
    (np.zeros((48, 64, 3), np.float32), 'uint8'),
    (np.zeros((48, 64), np.uint8), 'HxWx3'),
    (np.zeros((4, 4, 3), np.uint8), 'too small'),
])
def test_bad_frames_are_rejected_with_a_reason(backend, frame, message):
    with pytest.raises(ValueError, match=message):
        backend.embed_images([frame])


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown embedding backend 'tensorrtx'"):
        create_backend('tensorrtx')


def test_text_only_backend_refuses_images():
    b = create_backend('cpu', load_images=False)
    b.activate()
    with pytest.raises(RuntimeError, match='not activated for images'):
        b.embed_images([read_frame(0)])
    assert issubclass(BackendUnavailable, RuntimeError)
