"""Bags on the real demo video (ingest.bags reads, tools.bag_writer writes): write a bag, read it back, compare.

No ROS: rosbags writes and reads, OpenCV decodes the video. Storage back ends are parametrised (rosbag2's
own habit): MCAP and sqlite3 must behave the same."""
import json
import time

import cv2
import numpy as np
import pytest

from vidaction_ros.ingest import bags as bag_io
from vidaction_ros.ingest.image_codec import ImageFormatError
from vidaction_ros.tools import bag_cli, bag_pacer, bag_writer

FPS = 10.0
NS = 1_000_000_000


def source_frames(video, first, last, width=None):
    """Frames [first, last) read sequentially (seeking in compressed video is not frame-exact), scaled as the
    writer scales them."""
    cap = cv2.VideoCapture(video)
    frames = {}
    for index in range(last):
        ok, frame = cap.read()
        assert ok, f'cannot read frame {index}'
        if index >= first:
            if width:
                h, w = frame.shape[:2]
                frame = cv2.resize(frame, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
            frames[index] = frame
    cap.release()
    return frames


@pytest.fixture(scope='module', params=['mcap', 'sqlite3'])
def storage(request):
    return request.param


@pytest.fixture(scope='module')
def bags(tmp_path_factory, video_path, storage):
    """A raw (bgr8) and a compressed (jpeg) bag of media time [12.0, 14.0) s, 320 px wide."""
    root = tmp_path_factory.mktemp(f'bags_{storage}')
    common = dict(width=320, start_s=12.0, end_s=14.0, storage=storage)
    raw = bag_writer.write_video_bag(video_path, str(root / 'raw'), bag_writer.VideoToBag(**common))
    jpeg = bag_writer.write_video_bag(video_path, str(root / 'jpeg'),
                                  bag_writer.VideoToBag(compressed=True, jpeg_quality=90, **common))
    return raw, jpeg


@pytest.fixture(scope='module')
def sources(video_path):
    return source_frames(video_path, 120, 140, width=320)


def test_write_result_and_info_agree(bags, storage):
    for result, msgtype, topic in [(bags[0], bag_io.IMAGE, '/image_raw'),
                                   (bags[1], bag_io.COMPRESSED, '/image_raw/compressed')]:
        assert (result.count, result.width, result.height) == (20, 320, 240)
        assert (result.msgtype, result.topic) == (msgtype, topic)
        assert (result.first_stamp_ns, result.last_stamp_ns) == (12 * NS, 13_900_000_000)
        info = bag_io.bag_info(result.path)
        assert info.storage == storage
        assert info.message_count == 20
        assert [(t.name, t.msgtype, t.count) for t in info.topics] == [(topic, msgtype, 20)]
        assert (info.start_ns, info.end_ns, info.duration_ns) == (12 * NS, 13_900_000_000, 1_900_000_000)
        assert 'count=20' in bag_io.format_info(info)


@pytest.mark.parametrize('which', ['raw', 'jpeg'])
def test_read_back_stamps_are_media_time_and_pixels_match(bags, sources, which):
    result = bags[0] if which == 'raw' else bags[1]
    frames = list(bag_io.read_frames(result.path))
    assert len(frames) == 20
    stamps = [f.stamp_ns for f in frames]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), 'stamps must increase strictly'
    for i, frame in enumerate(frames):
        index = 120 + i
        assert frame.topic == result.topic
        assert frame.stamp_ns == frame.bag_time_ns == round(index / FPS * NS)
        assert frame.stamp_s == pytest.approx(index / FPS)
        assert frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8
        diff = np.abs(frame.image.astype(np.int16) - sources[index].astype(np.int16))
        if which == 'raw':
            assert diff.max() == 0, 'bgr8 Image is lossless'
        else:
            assert diff.mean() < 3.0, f'frame {index}: JPEG q90 mean abs error {diff.mean():.2f}'


def test_range_step_origin_and_full_resolution(tmp_path, video_path):
    options = bag_writer.VideoToBag(start_s=0.95, end_s=2.0, step=3, time_origin_s=1_700_000_000.5, compressed=True,
                                topic='cam/image/compressed', frame_id='front')
    result = bag_writer.write_video_bag(video_path, str(tmp_path / 'b'), options)
    frames = list(bag_io.read_frames(result.path))
    # [0.95, 2.0) at 10 fps is frames 10..19; every 3rd: 10, 13, 16, 19
    origin = 1_700_000_000_500_000_000
    assert [f.stamp_ns for f in frames] == [origin + i * 100_000_000 for i in (10, 13, 16, 19)]
    assert [f.bag_time_ns for f in frames] == [f.stamp_ns for f in frames]
    assert {f.topic for f in frames} == {'/cam/image/compressed'}
    assert frames[0].image.shape == (576, 768, 3), 'no --width: full resolution'


def test_png_compressed_is_lossless(tmp_path, video_path, sources):
    result = bag_writer.write_video_bag(video_path, str(tmp_path / 'png'), bag_writer.VideoToBag(
        compressed=True, codec='png', width=320, start_s=12.0, end_s=12.1))
    (frame,) = bag_io.read_frames(result.path)
    assert np.array_equal(frame.image, sources[120])


def test_topic_selection_and_errors(bags):
    raw = bags[0].path
    assert len(list(bag_io.read_frames(raw, ['image_raw']))) == 20, 'relative names are made absolute'
    with pytest.raises(bag_io.BagError, match=r'no topic /nope.*/image_raw \(sensor_msgs/msg/Image\)'):
        list(bag_io.read_frames(raw, ['/nope']))
    with pytest.raises(bag_io.BagError, match='not a rosbag2 bag'):
        bag_io.bag_info(raw + '_missing')


def _write_by_hand(path, topic, msgtype, make_msg, count=1):
    """A bag written with rosbags directly, as a bag recorded elsewhere would be."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore
    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    with Writer(path, version=9) as writer:
        conn = writer.add_connection(topic, msgtype, typestore=store)
        for i in range(count):
            header = types['std_msgs/msg/Header'](stamp=types['builtin_interfaces/msg/Time'](sec=i, nanosec=0),
                                                  frame_id='x')
            writer.write(conn, i * NS, store.serialize_cdr(make_msg(types, header), msgtype))
    return str(path)


def test_unknown_encoding_and_format_errors_name_topic_and_message(tmp_path):
    bad_raw = _write_by_hand(tmp_path / 'raw', '/cam', bag_io.IMAGE, lambda t, h: t[bag_io.IMAGE](
        header=h, height=2, width=2, encoding='32FC1', is_bigendian=0, step=8, data=np.zeros(16, np.uint8)))
    with pytest.raises(ImageFormatError, match=r"/cam message 1 .*unsupported encoding '32FC1'"):
        list(bag_io.read_frames(bad_raw))
    bad_fmt = _write_by_hand(tmp_path / 'fmt', '/cam/compressed', bag_io.COMPRESSED, lambda t, h: t[bag_io.COMPRESSED](
        header=h, format='h264', data=np.zeros(16, np.uint8)))
    with pytest.raises(ImageFormatError, match=r"/cam/compressed message 1 .*'h264'"):
        list(bag_io.read_frames(bad_fmt))
    garbage = _write_by_hand(tmp_path / 'garbage', '/c', bag_io.COMPRESSED, lambda t, h: t[bag_io.COMPRESSED](
        header=h, format='jpeg', data=np.frombuffer(b'\xff\xd8\xff\xe0 truncated', np.uint8)))
    with pytest.raises(ImageFormatError, match='does not decode'):
        list(bag_io.read_frames(garbage))


def test_non_image_topics_are_refused_or_skipped(tmp_path):
    path = _write_by_hand(tmp_path / 'str', '/chatter', 'std_msgs/msg/String',
                          lambda t, h: t['std_msgs/msg/String'](data='hi'), count=3)
    with pytest.raises(bag_io.BagError, match=r'no sensor_msgs/msg/Image / sensor_msgs/msg/CompressedImage topics.*'
                                              r'/chatter \(std_msgs/msg/String\)'):
        list(bag_io.read_frames(path))
    with pytest.raises(bag_io.BagError, match='/chatter is std_msgs/msg/String'):
        list(bag_io.read_frames(path, ['/chatter']))
    raw = list(bag_io.read_raw(path))
    assert [(m.topic, m.msgtype, m.bag_time_ns) for m in raw] == [('/chatter', 'std_msgs/msg/String', i * NS)
                                                                   for i in range(3)]
    assert raw[0].data[:4] == b'\x00\x01\x00\x00', 'CDR little-endian encapsulation header kept'


def test_writer_refuses_bad_options_and_leaves_nothing_behind(tmp_path, video_path):
    existing = tmp_path / 'exists'
    existing.mkdir()
    with pytest.raises(bag_io.BagError, match='exists already'):
        bag_writer.write_video_bag(video_path, str(existing))
    with pytest.raises(bag_io.BagError, match='video not found'):
        bag_writer.write_video_bag(str(tmp_path / 'missing.avi'), str(tmp_path / 'x'))
    for options, message in [(bag_writer.VideoToBag(storage='rosbag_v2'), 'storage'),
                             (bag_writer.VideoToBag(step=0), 'step'),
                             (bag_writer.VideoToBag(start_s=5, end_s=5), 'end_s'),
                             (bag_writer.VideoToBag(width=1), 'width'),
                             (bag_writer.VideoToBag(jpeg_quality=0), 'jpeg_quality'),
                             (bag_writer.VideoToBag(topic='bad topic'), 'invalid topic')]:
        with pytest.raises(bag_io.BagError, match=message):
            bag_writer.write_video_bag(video_path, str(tmp_path / 'y'), options)
        assert not (tmp_path / 'y').exists()
    with pytest.raises(bag_io.BagError, match='no frames in the range'):
        bag_writer.write_video_bag(video_path, str(tmp_path / 'z'), bag_writer.VideoToBag(start_s=500, end_s=600))
    assert not (tmp_path / 'z').exists(), 'a failed write removes its bag directory'


def test_frame_range_and_stamps_are_exact():
    assert bag_writer.frame_range(10.0, 46.0, 60.0) == (460, 600)
    assert bag_writer.frame_range(10.0, 0.0, None) == (0, None)
    assert bag_writer.frame_range(29.97, 1.0, 2.0) == (30, 60)
    assert [bag_writer.frame_stamp_ns(i, 10.0) for i in (0, 1, 795)] == [0, 100_000_000, 79_500_000_000]
    assert bag_writer.frame_stamp_ns(3, 30000 / 1001, origin_ns=5) == 5 + round(3 * 1001 / 30000 * NS)


def test_pacer_maps_bag_time_to_wall_deadlines():
    pacer = bag_pacer.Pacer(2.0)
    assert pacer.bag_time_at(100.0) is None
    assert pacer.deadline(10 * NS, wall_s=100.0) == 100.0          # anchored on the first message
    assert pacer.deadline(12 * NS, wall_s=100.3) == pytest.approx(101.0)   # 2 s of bag at rate 2
    assert pacer.bag_time_at(100.5) == 11 * NS
    pacer.restart(10 * NS, 200.0)                                    # a new pass
    assert pacer.deadline(11 * NS, wall_s=200.0) == pytest.approx(200.5)
    fast = bag_pacer.Pacer(0)
    assert fast.deadline(5 * NS, 1.0) == 1.0 and fast.deadline(9 * NS, 1.2) == 1.2
    for bad in (-1.0, float('inf'), float('nan')):
        with pytest.raises(ValueError, match='rate'):
            bag_pacer.Pacer(bad)


def test_cli_from_video_and_info(tmp_path, video_path, capsys):
    out = tmp_path / 'cli_bag'
    code = bag_cli.main(['from-video', video_path, str(out), '--compressed', '--width', '160', '--start-s', '1',
                         '--end-s', '1.5', '--storage', 'sqlite3'])
    assert code == 0
    assert 'wrote 5 sensor_msgs/msg/CompressedImage messages (160x120)' in capsys.readouterr().out
    assert bag_cli.main(['info', str(out), '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['storage'] == 'sqlite3' and info['message_count'] == 5
    assert info['topics'] == [{'name': '/image_raw/compressed', 'type': bag_io.COMPRESSED, 'count': 5}]
    assert info['start_s'] == pytest.approx(1.0) and info['duration_s'] == pytest.approx(0.4)
    assert bag_cli.main(['from-video', video_path, str(out)]) == 2
    assert 'exists already' in capsys.readouterr().err


def test_cli_splits_ros_arguments():
    ours, ros = bag_cli.split_ros_args(['play', 'b', '--rate', '2', '--ros-args', '-r', '/a:=/b', '--', '--loop'])
    assert ours == ['play', 'b', '--rate', '2', '--loop']
    assert ros == ['--ros-args', '-r', '/a:=/b', '--']


def test_committed_replay_fixture_is_what_the_readme_says():
    from pathlib import Path
    bag = Path(__file__).resolve().parent.parent / 'data' / 'vtest_replay'
    info = bag_io.bag_info(str(bag))
    assert info.storage == 'mcap'
    assert [(t.name, t.msgtype, t.count) for t in info.topics] == [('/image_raw/compressed', bag_io.COMPRESSED, 80)]
    assert (info.start_ns, info.end_ns) == (46 * NS, 61_800_000_000)
    assert info.size_bytes < 3_500_000
    first = next(iter(bag_io.read_frames(str(bag))))
    assert first.image.shape == (480, 640, 3)


# -- BagFrameSource: a bag wherever the camera takes a video file ---------------------------------------------
def _mixed_bag(tmp_path, frame_jpeg):
    """Three CompressedImage messages, the middle one undecodable, plus a second image topic."""
    def make(t, h):
        good = h.stamp.sec != 1
        return t[bag_io.COMPRESSED](header=h, format='jpeg',
                                    data=np.frombuffer(frame_jpeg if good else b'\x00\x01junk', np.uint8))
    return _write_by_hand(tmp_path / 'mixed', '/cam/compressed', bag_io.COMPRESSED, make, count=3)


def test_bag_frame_source_reads_like_a_video_file():
    from pathlib import Path
    bag = str(Path(__file__).resolve().parent.parent / 'data' / 'vtest_replay')
    assert bag_io.is_bag_path(bag) and not bag_io.is_bag_path('/usr/share/doc/opencv-doc/examples/data/vtest.avi')
    source = bag_io.BagFrameSource(bag)
    source.open()
    assert source.fps == pytest.approx(5.0) and source.topic == '/image_raw/compressed'
    assert (source.kind, source.is_live) == ('file', False)
    reads = []
    while True:
        image, index, media = source.read()
        if image is None:
            break
        reads.append((index, media, image.shape))
    source.close()
    assert [r[0] for r in reads] == list(range(80))
    assert [r[1] for r in reads] == pytest.approx([46.0 + 0.2 * i for i in range(80)])
    assert {r[2] for r in reads} == {(480, 640, 3)}


def test_bag_frame_source_skips_bad_frames_loops_and_refuses_ambiguity(tmp_path):
    from vidaction_ros.ingest.frame_source import SourceError
    jpeg = cv2.imencode('.jpg', np.full((48, 64, 3), 128, np.uint8))[1].tobytes()
    path = _mixed_bag(tmp_path, jpeg)
    source = bag_io.BagFrameSource(path, loop=True)
    source.open()
    medias = [source.read()[2] for _ in range(5)]
    source.close()
    assert medias == [0.0, 2.0, 0.0, 2.0, 0.0], 'the undecodable frame (t=1 s) is skipped, then the bag loops'
    assert source.bad_frames == 2 and 'message 2' in source.last_error and source.loops == 2
    with pytest.raises(SourceError, match='no topic /other'):
        bag_io.BagFrameSource(path, topic='/other').open()
    with pytest.raises(SourceError, match='not a rosbag2 bag'):
        bag_io.BagFrameSource(str(tmp_path / 'missing')).open()
    with pytest.raises(SourceError, match='not open'):
        bag_io.BagFrameSource(path).read()


def test_bag_frame_source_drives_the_capture_thread():
    """The camera's CaptureThread takes a BagFrameSource in place of an OpenCvSource, unchanged."""
    from pathlib import Path

    from vidaction_ros.ingest.frame_source import CaptureThread
    bag = str(Path(__file__).resolve().parent.parent / 'data' / 'vtest_replay')
    capture = CaptureThread(bag_io.BagFrameSource(bag), 320, 240, realtime=False)
    frames = []
    capture.start()
    try:
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            done = capture.finished.is_set()     # read before taking: a frame put before 'finished' is seen
            frame = capture.slot.take(timeout=0.5)
            if frame is not None:
                frames.append(frame)
            elif done:
                break
    finally:
        capture.stop()
    assert capture.captured == 80 and capture.state == 'finished'
    assert frames and all(f.image.shape == (240, 320, 3) and f.source_size == (640, 480) for f in frames)
    assert [f.media_s for f in frames] == sorted(f.media_s for f in frames)
