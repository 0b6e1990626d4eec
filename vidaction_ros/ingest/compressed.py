"""sensor_msgs/CompressedImage <-> bgr8 numpy arrays, and one decoder for either image message.

Pure numpy/OpenCV, no ROS import: the functions take the message's fields, or any object that has them
(an rclpy message or a `rosbags` dataclass alike), so the camera node and the bag reader share them.

The `format` field comes in several dialects, all handled here:
  "jpeg", "png", "jpg"                        plain codec names (many drivers, foxglove, rosbags users)
  "bgr8; jpeg compressed bgr8"                image_transport's compressed plugin: "<source encoding>;
  "rgb8; jpeg compressed bgr8"                 <codec> compressed <payload encoding>"
  "mono8; png compressed mono8"
  ""                                          unspecified: the payload's magic bytes decide
Refused with a clear error: compressedDepth (depth maps, 32FC1 quantised: not camera frames), video
codecs (theora, h264, ...), and anything whose bytes are neither JPEG nor PNG.

Why the payload's colour order needs no special handling: JPEG and PNG are self-describing (JPEG stores
YCbCr, PNG stores RGB) and cv2.imdecode always returns BGR. The "compressed bgr8" suffix only records what
cv_bridge handed the encoder, so "rgb8; jpeg compressed bgr8" still decodes to a correct bgr8 image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .image_codec import ENCODINGS, ImageFormatError, decode_raw

CODECS = ('jpeg', 'png')
_ALIASES = {'jpeg': 'jpeg', 'jpg': 'jpeg', 'png': 'png'}
_MAGIC = {'jpeg': b'\xff\xd8\xff', 'png': b'\x89PNG\r\n\x1a\n'}


@dataclass(frozen=True)
class CompressedFormat:
    codec: str            # 'jpeg' or 'png', or '' when the format string does not say (sniff the bytes)
    source_encoding: str  # encoding of the image before compression ('bgr8', 'rgb8', 'mono8'; '' unknown)


def parse_format(fmt: str) -> CompressedFormat:
    """Parse a CompressedImage.format string; ImageFormatError names the format when it is not ours."""
    text = (fmt or '').strip()
    lowered = text.lower()
    if 'compresseddepth' in lowered:
        raise ImageFormatError(f'CompressedImage format {fmt!r}: compressedDepth (depth maps) is not a camera '
                               f'frame; supported codecs: {", ".join(CODECS)}')
    if not lowered:
        return CompressedFormat('', '')
    source = ''
    payload = lowered
    if ';' in lowered:
        # image_transport: "<source encoding>; <codec> compressed <payload encoding>"
        source_part, payload = lowered.split(';', 1)
        source = source_part.strip()
    tokens = payload.replace(',', ' ').split()
    codecs = {_ALIASES[t] for t in tokens if t in _ALIASES}
    if len(codecs) != 1:
        raise ImageFormatError(f'CompressedImage format {fmt!r}: no single codec named; supported: '
                               f'{", ".join(CODECS)} (e.g. "jpeg" or "bgr8; jpeg compressed bgr8")')
    return CompressedFormat(codecs.pop(), source)


def sniff_codec(data) -> str:
    """'jpeg' or 'png' from the payload's first bytes; '' when it is neither."""
    head = np.frombuffer(data, dtype=np.uint8)[:8].tobytes()
    for codec, magic in _MAGIC.items():
        if head.startswith(magic):
            return codec
    return ''


def decode_compressed(fmt: str, data) -> np.ndarray:
    """A CompressedImage's format and data -> bgr8 HxWx3 array. Raises ImageFormatError saying why not."""
    import cv2
    parse_format(fmt)  # refuses compressedDepth and non-image codecs before looking at the bytes
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageFormatError(f'CompressedImage format {fmt!r}: empty data')
    actual = sniff_codec(buf)
    if not actual:
        raise ImageFormatError(f'CompressedImage format {fmt!r}: data ({buf.size} bytes, starting '
                               f'{bytes(buf[:4]).hex()}) is neither JPEG nor PNG')
    # A format naming the other codec is tolerated: imdecode reads what the bytes are, and refusing a
    # mislabelled producer would drop frames that decode perfectly well.
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageFormatError(f'CompressedImage format {fmt!r}: {actual} data ({buf.size} bytes) does not '
                               f'decode (truncated or corrupt)')
    return image


def encode_compressed(image: np.ndarray, codec: str = 'jpeg', quality: int = 90) -> tuple[str, bytes]:
    """bgr8 (or mono8) array -> (format, data) as image_transport's compressed plugin writes them."""
    import cv2
    codec = _ALIASES.get(codec.lower(), codec.lower())
    if codec not in CODECS:
        raise ValueError(f'codec {codec!r} not supported; choose one of {", ".join(CODECS)}')
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f'expected a uint8 HxWx3 bgr8 or HxW mono8 image, got {image.dtype} {image.shape}')
    encoding = 'mono8' if image.ndim == 2 else 'bgr8'
    if codec == 'jpeg':
        if not 1 <= int(quality) <= 100:
            raise ValueError(f'JPEG quality must be in 1..100, got {quality}')
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode('.jpg' if codec == 'jpeg' else '.png', image, params)
    if not ok:
        raise ValueError(f'OpenCV could not encode a {image.shape} image as {codec}')
    return f'{encoding}; {codec} compressed {encoding}', buf.tobytes()


# -- raw sensor_msgs/Image encodings beyond image_codec's 8-bit set ---------------------------------------
# Cameras that deliver YUV 4:2:2 (most USB webcams through usb_cam / v4l2_camera) and 16-bit mono
# (machine-vision cameras) are common in bags recorded elsewhere.
_YUV422 = {
    'yuv422': 'COLOR_YUV2BGR_UYVY',       # ROS's "yuv422" is UYVY byte order (sensor_msgs image_encodings)
    'uyvy': 'COLOR_YUV2BGR_UYVY',
    'yuv422_yuy2': 'COLOR_YUV2BGR_YUY2',
    'yuyv': 'COLOR_YUV2BGR_YUY2',
}
RAW_EXTRA_ENCODINGS = tuple(_YUV422) + ('mono16',)


def decode_raw_image(height: int, width: int, encoding: str, step: int, data, is_bigendian: int = 0) -> np.ndarray:
    """A sensor_msgs/Image's fields -> bgr8: image_codec's 8-bit encodings plus YUV 4:2:2 and mono16."""
    import cv2
    if encoding in _YUV422 or encoding == 'mono16':
        if height <= 0 or width <= 0:
            raise ImageFormatError(f'zero-size image {width}x{height}')
        row_bytes = width * 2
        if step < row_bytes:
            raise ImageFormatError(f'step {step} < width*2 = {row_bytes} for {encoding}')
        buf = np.frombuffer(data, dtype=np.uint8)
        if buf.size < step * height:
            raise ImageFormatError(f'data has {buf.size} bytes, expected step*height = {step * height}')
        rows = buf[:step * height].reshape(height, step)[:, :row_bytes]
        if encoding == 'mono16':
            # Keep the high byte: 16-bit intensities shown as 8-bit, as image viewers do.
            wide = np.ascontiguousarray(rows).view('>u2' if is_bigendian else '<u2').reshape(height, width)
            return cv2.cvtColor((wide >> 8).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        if width % 2:
            raise ImageFormatError(f'{encoding} needs an even width (2 pixels share chroma), got {width}')
        pairs = np.ascontiguousarray(rows).reshape(height, width, 2)
        return cv2.cvtColor(pairs, getattr(cv2, _YUV422[encoding]))
    if encoding not in ENCODINGS:
        # decode_raw's own message lists only its 8-bit set; a sensor_msgs/Image reaching us here may also
        # be YUV 4:2:2 or mono16, so name everything this decoder takes (bad-input table, docs/faults.md).
        raise ImageFormatError(f'unsupported encoding {encoding!r}; supported: '
                               f'{sorted(ENCODINGS) + sorted(RAW_EXTRA_ENCODINGS)}')
    return decode_raw(height, width, encoding, step, data)


def message_to_bgr(msg) -> np.ndarray:
    """Either image message (rclpy or rosbags object) -> bgr8. CompressedImage has `format`, Image has
    `encoding`; anything else is refused."""
    if hasattr(msg, 'format') and hasattr(msg, 'data') and not hasattr(msg, 'encoding'):
        return decode_compressed(msg.format, msg.data)
    if hasattr(msg, 'encoding') and hasattr(msg, 'step'):
        return decode_raw_image(msg.height, msg.width, msg.encoding, msg.step, msg.data,
                                getattr(msg, 'is_bigendian', 0))
    raise ImageFormatError(f'{type(msg).__name__} is neither sensor_msgs/Image nor sensor_msgs/CompressedImage')
