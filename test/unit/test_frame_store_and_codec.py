import threading

import numpy as np
import pytest

from vidaction_ros.transport.frame_store import FrameLost, InprocFrameStore, close_store, find_store, open_store
from vidaction_ros.ingest.image_codec import ImageFormatError, decode_raw


def test_store_returns_the_very_same_object():
    store = InprocFrameStore('t', slots=4)
    frame = np.zeros((4, 4, 3), np.uint8)
    slot, gen = store.put(frame)
    assert store.get(slot, gen) is frame


def test_overwritten_slot_is_reported_not_substituted():
    store = InprocFrameStore('t', slots=2)
    first = np.zeros(1)
    slot, gen = store.put(first)
    store.put(np.ones(1))
    store.put(np.full(1, 2.0))        # wraps onto the first slot
    with pytest.raises(FrameLost, match='overwritten'):
        store.get(slot, gen)
    assert store.lost == 1


def test_a_held_frame_is_never_changed_by_later_puts():
    store = InprocFrameStore('t', slots=2)
    slot, gen = store.put(np.full((2, 2), 7, np.uint8))
    held = store.get(slot, gen)
    for i in range(10):
        store.put(np.full((2, 2), i, np.uint8))
    assert (held == 7).all()


def test_registry_finds_stores_by_name_and_explains_a_missing_one():
    store = open_store('unit-test-store', 3)
    assert find_store('unit-test-store') is store
    close_store('unit-test-store')
    with pytest.raises(FrameLost, match='transport:=image'):
        find_store('unit-test-store')


def test_store_is_consistent_under_concurrent_writers_and_readers():
    store = InprocFrameStore('t', slots=4)
    errors = []

    def writer():
        for i in range(2000):
            store.put(np.full(8, i % 251, np.uint8))

    def reader():
        for _ in range(2000):
            slot, gen = store.put(np.full(8, 3, np.uint8))
            try:
                value = store.get(slot, gen)
                if not (value == value[0]).all():
                    errors.append('torn')
            except FrameLost:
                pass
    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors


def test_decode_bgr_rgb_mono_with_padded_rows():
    rgb = np.array([[[255, 0, 0], [0, 255, 0]]], np.uint8)          # 1x2 red, green
    padded = np.zeros((1, 8), np.uint8)
    padded[0, :6] = rgb.ravel()
    out = decode_raw(1, 2, 'rgb8', 8, padded.tobytes())
    assert out.tolist() == [[[0, 0, 255], [0, 255, 0]]]             # in bgr order
    mono = decode_raw(2, 2, 'mono8', 2, bytes([0, 10, 20, 30]))
    assert mono.shape == (2, 2, 3) and mono[1, 1].tolist() == [30, 30, 30]


@pytest.mark.parametrize('height,width,encoding,step,size,message', [
    (0, 4, 'bgr8', 12, 0, 'zero-size'),
    (2, 4, 'bgr8', 8, 64, 'step'),
    (2, 4, 'bgr8', 12, 20, 'expected step'),
    (2, 2, 'yuv422', 4, 8, 'unsupported encoding'),
    (2, 2, '16UC1', 4, 8, 'unsupported encoding'),
])
def test_decode_rejects_malformed_images_with_a_reason(height, width, encoding, step, size, message):
    with pytest.raises(ImageFormatError, match=message):
        decode_raw(height, width, encoding, step, bytes(size))
