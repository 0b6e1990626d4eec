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
