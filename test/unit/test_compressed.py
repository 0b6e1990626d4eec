"""CompressedImage / raw Image decoding (vidaction_ros.ingest.compressed) on a real frame of the demo video."""
import cv2
import numpy as np
import pytest

from conftest import read_frame
from vidaction_ros.ingest.compressed import (CompressedFormat, decode_compressed, decode_raw_image, encode_compressed,
                                      message_to_bgr, parse_format, sniff_codec)
from vidaction_ros.ingest.image_codec import ImageFormatError


@pytest.fixture(scope='module')
def frame():
    return read_frame(300, size=(320, 240))


@pytest.mark.parametrize('fmt, expected', [
    ('jpeg', CompressedFormat('jpeg', '')),
    ('JPG', CompressedFormat('jpeg', '')),
    ('png', CompressedFormat('png', '')),
    ('bgr8; jpeg compressed bgr8', CompressedFormat('jpeg', 'bgr8')),
    ('rgb8; jpeg compressed bgr8', CompressedFormat('jpeg', 'rgb8')),
    ('mono8; png compressed mono8', CompressedFormat('png', 'mono8')),
    ('', CompressedFormat('', '')),
    ('  ', CompressedFormat('', '')),
])
def test_parse_format_dialects(fmt, expected):
    assert parse_format(fmt) == expected


@pytest.mark.parametrize('fmt, message', [
    ('16UC1; compressedDepth png', 'compressedDepth'),
    ('h264', "no single codec named"),
    ('theora', "no single codec named"),
    ('jpeg png', "no single codec named"),
])
def test_parse_format_refuses_what_is_not_a_jpeg_or_png_frame(fmt, message):
    with pytest.raises(ImageFormatError, match=message) as info:
        parse_format(fmt)
    assert repr(fmt) in str(info.value), 'the error names the offending format'


@pytest.mark.parametrize('codec, fmt', [('jpeg', 'bgr8; jpeg compressed bgr8'), ('png', 'bgr8; png compressed bgr8')])
def test_encode_then_decode_round_trip(frame, codec, fmt):
    got_fmt, data = encode_compressed(frame, codec, quality=90)
    assert got_fmt == fmt
    assert sniff_codec(data) == codec
    for label in (fmt, codec, '', 'rgb8; jpeg compressed bgr8' if codec == 'jpeg' else 'png'):
        image = decode_compressed(label, data)
        assert image.shape == frame.shape and image.dtype == np.uint8
        diff = np.abs(image.astype(np.int16) - frame.astype(np.int16)).mean()
        assert diff == 0 if codec == 'png' else diff < 3.0


def test_decoded_colour_order_is_bgr(frame):
    # A pure red patch stays red (BGR channel 2) through JPEG, whatever the format string's source encoding.
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 2] = 255
    for fmt in ('bgr8; jpeg compressed bgr8', 'rgb8; jpeg compressed bgr8'):
        image = decode_compressed(fmt, encode_compressed(red, 'jpeg', 95)[1])
        assert image[..., 2].mean() > 240 and image[..., :2].mean() < 15


def test_mono_payload_decodes_to_three_channels(frame):
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    fmt, data = encode_compressed(grey, 'png')
    assert fmt == 'mono8; png compressed mono8'
    image = decode_compressed(fmt, data)
    assert image.shape == (240, 320, 3)
    assert np.array_equal(image[..., 0], grey)


def test_decode_errors_say_why(frame):
    with pytest.raises(ImageFormatError, match='empty data'):
        decode_compressed('jpeg', b'')
    with pytest.raises(ImageFormatError, match='neither JPEG nor PNG'):
        decode_compressed('jpeg', b'GIF89a....')
    jpeg = encode_compressed(frame, 'jpeg')[1]
    with pytest.raises(ImageFormatError, match='does not decode'):
        decode_compressed('jpeg', jpeg[:40])
    with pytest.raises(ImageFormatError, match='compressedDepth'):
        decode_compressed('32FC1; compressedDepth', jpeg)
    with pytest.raises(ValueError, match='codec'):
        encode_compressed(frame, 'webp')
    with pytest.raises(ValueError, match='quality'):
        encode_compressed(frame, 'jpeg', quality=101)


def test_yuv422_both_byte_orders(frame):
    h, w = frame.shape[:2]
    # Packed 4:2:2 as cameras send it: BT.601 video-range YCbCr (what OpenCV's YUV2BGR_UYVY/YUY2 expect),
    # U and V shared by each horizontal pair of pixels.
    b, g, r = (frame[..., i].astype(np.float64) for i in range(3))
    y = np.clip(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255, 0, 255).round().astype(np.uint8)
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    u = np.clip(cb.reshape(h, w // 2, 2).mean(axis=2), 0, 255).round().astype(np.uint8)
    v = np.clip(cr.reshape(h, w // 2, 2).mean(axis=2), 0, 255).round().astype(np.uint8)
    uyvy = np.stack([u, y[:, 0::2], v, y[:, 1::2]], axis=-1).reshape(h, w * 2)
    yuyv = np.stack([y[:, 0::2], u, y[:, 1::2], v], axis=-1).reshape(h, w * 2)
    for encoding, packed in [('yuv422', uyvy), ('uyvy', uyvy), ('yuv422_yuy2', yuyv), ('yuyv', yuyv)]:
        image = decode_raw_image(h, w, encoding, w * 2, packed.tobytes())
        assert image.shape == frame.shape
        assert np.abs(image.astype(np.int16) - frame.astype(np.int16)).mean() < 2.0, encoding
    # The byte order matters: UYVY bytes read as YUYV are far off (measured ~43), so the test tells them apart.
    swapped = decode_raw_image(h, w, 'yuyv', w * 2, uyvy.tobytes())
    assert np.abs(swapped.astype(np.int16) - frame.astype(np.int16)).mean() > 20.0
    with pytest.raises(ImageFormatError, match='even width'):
        decode_raw_image(2, 3, 'yuyv', 6, bytes(12))


def test_mono16_and_padding_and_short_buffers():
    wide = np.array([[0, 256, 65535]], dtype='<u2')
    image = decode_raw_image(1, 3, 'mono16', 8, wide.tobytes() + b'\0\0')   # 2 bytes of row padding
    assert image[0, :, 0].tolist() == [0, 1, 255]
    big = decode_raw_image(1, 3, 'mono16', 6, wide.astype('>u2').tobytes(), is_bigendian=1)
    assert big[0, :, 0].tolist() == [0, 1, 255]
    with pytest.raises(ImageFormatError, match='expected step\\*height'):
        decode_raw_image(2, 3, 'mono16', 6, bytes(6))
    with pytest.raises(ImageFormatError, match="unsupported encoding 'bayer_rggb8'"):
        decode_raw_image(2, 2, 'bayer_rggb8', 2, bytes(4))


def test_message_to_bgr_takes_rclpy_messages_of_either_type(frame):
    from sensor_msgs.msg import CompressedImage, Image
    compressed = CompressedImage()
    compressed.format, data = encode_compressed(frame, 'png')
    compressed.data = data
    assert np.array_equal(message_to_bgr(compressed), frame)
    raw = Image(height=240, width=320, encoding='rgb8', step=960)
    raw.data = np.ascontiguousarray(frame[..., ::-1]).tobytes()
    assert np.array_equal(message_to_bgr(raw), frame)
    with pytest.raises(ImageFormatError, match='neither sensor_msgs/Image nor'):
        message_to_bgr(object())
