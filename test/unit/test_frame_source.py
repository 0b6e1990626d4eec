import threading
import time

import numpy as np
import pytest

from vidaction_ros.ingest.frame_source import (Backoff, CaptureThread, CapturedFrame, LatestFrameSlot, OpenCvSource,
                                        SourceError, classify_source, downscale, redact_url, working_size)


def test_credentials_never_reach_the_display_uri():
    assert redact_url('rtsp://admin:s3cret@10.0.0.2:554/live') == 'rtsp://***@10.0.0.2:554/live'
    assert redact_url('http://cam.local/stream') == 'http://cam.local/stream'
    assert 's3cret' not in OpenCvSource('rtsp://admin:s3cret@cam/live').display_uri


@pytest.mark.parametrize('uri,kind', [('/dev/video0', 'v4l2'), ('2', 'v4l2'), ('rtsp://h/x', 'stream'),
                                      ('https://h/x.mjpg', 'stream'), ('/tmp/a.avi', 'file'), ('video.mp4', 'file')])
def test_source_kinds(uri, kind):
    assert classify_source(uri) == kind


def test_working_size_keeps_aspect_and_never_upscales():
    assert working_size(768, 576, 640, 480) == (640, 480)
    assert working_size(1920, 1080, 640, 480) == (640, 360)
    assert working_size(320, 240, 640, 480) == (320, 240)
    frame = np.zeros((1080, 1920, 3), np.uint8)
    assert downscale(frame, 640, 480).shape == (360, 640, 3)
    small = np.zeros((10, 10, 3), np.uint8)
    assert downscale(small, 640, 480) is small


def test_a_shrink_by_two_or_more_averages_and_a_milder_one_interpolates():
    from vidaction_ros.ingest.frame_source import downscale_into
    # 2x and more: each output pixel is the mean of its source block (area averaging, no aliasing). Expected
    # from first principles: a 0 / 200 checkerboard shrunk 3x averages 3x3 blocks holding 5 or 4 white
    # pixels: 111 or 89, never the 0 or 200 a point sample (bilinear at 3x) would give.
    board = (np.indices((1440, 1920)).sum(axis=0) % 2 * 200).astype(np.uint8)
    frame = np.repeat(board[:, :, None], 3, axis=2)
    assert set(np.unique(downscale(frame, 640, 480))) == {89, 111}
    # A milder shrink (1.2x here) is bilinear: a horizontal ramp stays a ramp, monotonic and within its range,
    # each output value between the two source pixels it falls between.
    ramp = np.repeat(np.repeat(np.arange(768, dtype=np.float64)[None, :] / 3, 576, axis=0)[:, :, None], 3, axis=2)
    out = downscale(ramp.astype(np.uint8), 640, 480)
    row = out[100, :, 0].astype(int)
    assert out.shape == (480, 640, 3) and np.all(np.diff(row) >= 0)
    for x in (0, 100, 333, 639):
        src = (x + 0.5) * 768 / 640 - 0.5
        lo, hi = int(np.floor(src)) // 3, int(np.ceil(src)) // 3
        assert lo <= row[x] <= hi + 1, (x, row[x], lo, hi)
    loan = np.empty((480, 640, 3), np.uint8)
    downscale_into(ramp.astype(np.uint8), loan)
    assert np.array_equal(loan, out)                           # the camera's loan path gives the same pixels


def test_backoff_doubles_and_caps_then_resets():
    b = Backoff(0.5, 3.0)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_latest_slot_keeps_only_the_newest_and_counts_overwrites():
    slot = LatestFrameSlot()
    for i in range(5):
        slot.put(CapturedFrame(np.zeros(1), i, None, 0.0, (1, 1)))
    assert slot.take().index == 4
    assert slot.overwritten == 4
    assert slot.take() is None


def test_missing_file_fails_with_its_path():
    with pytest.raises(SourceError, match='not found: /nonexistent.avi'):
        OpenCvSource('/nonexistent.avi').open()


def test_file_source_reads_real_video_with_media_time(video_path):
    source = OpenCvSource(video_path)
    source.open()
    frames = [source.read() for _ in range(3)]
    source.close()
    assert source.fps == pytest.approx(10.0)
    assert [f[1] for f in frames] == [0, 1, 2]
    assert [f[2] for f in frames] == pytest.approx([0.0, 0.1, 0.2])
    assert frames[0][0].shape == (576, 768, 3)


def test_capture_thread_downscales_and_latest_wins(video_path):
    capture = CaptureThread(OpenCvSource(video_path), 320, 240, realtime=False)
    capture.start()
    assert capture.finished.wait(60), 'file should be read to its end'
    capture.stop()
    frame = capture.slot.take()
    assert frame.image.shape == (240, 320, 3)
    assert frame.index == 794                     # the last frame of the file is what is left
    assert capture.captured == 795
    assert capture.slot.overwritten == 794        # nobody consumed: every older frame was replaced


def test_unreachable_stream_reconnects_with_backoff_and_logs_once_per_state():
    states = []
    capture = CaptureThread(OpenCvSource('rtsp://127.0.0.1:9/none'), 64, 64, backoff=Backoff(0.01, 0.02),
                            on_state=states.append)
    capture.start()
    deadline = time.monotonic() + 60
    idle = threading.Event()
    while capture.reconnects < 3 and time.monotonic() < deadline:
        idle.wait(0.05)
    capture.stop()
    assert capture.reconnects >= 3
    assert states == ['reconnecting']          # one state change, however many attempts


def test_demo_frames_for_benches_scale_the_video_or_say_what_is_missing(monkeypatch, video_path):
    from vidaction_ros.ingest import frame_source
    frames = frame_source.demo_frames(64, 48, count=3)
    assert len(frames) == 3 and all(f.shape == (48, 64, 3) and f.flags.c_contiguous for f in frames)
    assert not np.array_equal(frames[0], frames[2])                  # real, moving video frames
    monkeypatch.setattr(frame_source, 'DEMO_VIDEO', '/nonexistent/vtest.avi')
    with pytest.raises(SystemExit, match='opencv-doc'):
        frame_source.demo_frames(64, 48)
    synthetic = frame_source.demo_frames(64, 48, count=2, synthetic_if_missing=True)
    assert [f.shape for f in synthetic] == [(48, 64, 3)] * 2 and synthetic[0].dtype == np.uint8
    assert int(synthetic[1][0, 0, 0]) == 1 and int(synthetic[0][47, 63, 0]) == (47 + 63) % 256   # the gradient
