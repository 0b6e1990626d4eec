"""The overlay picture, checked where the geometry says the drawing must be: pixels at a region's edge, a
detection box's edge and the banner, after a JPEG round trip (what a viewer decodes). Expected positions come
from the normalised coordinates and the image size, never from the drawing code's output."""
import math

import cv2
import numpy as np
import pytest

from vidaction_ros.overlay.draw import (AMBER, GREEN, GREY, RED, Box, OverlayState, Score, encode_jpeg, render)

W, H = 641, 481          # odd sizes: x * (W - 1) lands on whole pixels for x = 0.5, 0.25, ...
ZONE = [(0.5, 0.25), (0.875, 0.25), (0.875, 0.75), (0.5, 0.75)]
TOLERANCE = 60           # per channel, JPEG at quality 95 around thin coloured lines on black


def decoded(state: OverlayState) -> np.ndarray:
    jpeg = encode_jpeg(render(np.zeros((H, W, 3), np.uint8), state), quality=95)
    assert jpeg[:2] == b'\xff\xd8'               # a JPEG, as sensor_msgs/CompressedImage format 'jpeg' says
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (H, W, 3)
    return image


def close_to(pixel, colour) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= TOLERANCE))


def test_deciding_region_edge_is_drawn_in_the_action_colour_and_nothing_inside():
    state = OverlayState(action='STOP', action_code=3, trigger='prompt', latency_ms=42.0, region='zone',
                         regions={'zone': ZONE, 'other': [(0.0, 0.9), (0.2, 0.9), (0.2, 1.0)]})
    image = decoded(state)
    x_left = round(0.5 * (W - 1))                 # 320: the zone's left edge
    y_mid = round(0.5 * (H - 1))                  # 240
    assert close_to(image[y_mid, x_left], RED)    # STOP is protective: red
    assert close_to(image[y_mid, round(0.875 * (W - 1))], RED)    # right edge (560)
    assert close_to(image[round(0.25 * (H - 1)), 400], RED)        # top edge (row 120)
    assert image[y_mid, 440].max() < 40           # the inside is not filled
    assert image[y_mid, 100].max() < 40           # nor anything left of the zone


def test_detection_box_edges_in_the_deciding_region_colour_outside_it_grey():
    inside = Box('person', 0.87, 0.5625, 0.375, 0.75, 0.625, ('zone',))
    outside = Box('car', 0.55, 0.0625, 0.375, 0.25, 0.625, ())
    state = OverlayState(action='SLOW_DOWN', action_code=1, trigger='prompt', region='zone',
                         regions={'zone': ZONE}, boxes=(inside, outside))
    image = decoded(state)
    y = round(0.5 * (H - 1))
    assert close_to(image[y, round(0.5625 * (W - 1))], AMBER)     # caution: amber, the box in the zone
    assert close_to(image[y, round(0.75 * (W - 1))], AMBER)
    assert close_to(image[y, round(0.0625 * (W - 1))], GREY)      # a box outside the deciding region: grey
    assert close_to(image[y, round(0.25 * (W - 1))], GREY)
    assert image[y, round(0.15 * (W - 1))].max() < 40             # boxes are outlines


def test_banner_colour_says_the_action_and_failsafe_is_red():
    for state, colour in [(OverlayState(action='CONTINUE', action_code=0, trigger='default'), GREEN),
                          (OverlayState(action='FAILSAFE', action_code=5, trigger='watchdog', failsafe=True,
                                        reason='perception stale'), RED)]:
        image = decoded(state)
        assert close_to(image[2, W - 3], colour) and close_to(image[2, 2], colour)
        assert image[40, W // 2].max() < 40        # below the banner: the frame


def test_score_bar_fills_to_the_score_and_marks_the_enter_threshold():
    # One bar: scale [0, max(enter, score) * 1.25] over 120 px from x = 8; score 0.2, enter 0.4 -> scale 0.5.
    state = OverlayState(action='CONTINUE', action_code=0, scores=(Score('STOP', 0.2, 0.4, 0.3, False),))
    image = render(np.zeros((H, W, 3), np.uint8), state)   # exact pixels (no JPEG): bar geometry
    y = H - 8 - 12 + 6                                       # the bar's middle row
    fill_end = 8 + round(0.2 / 0.5 * 120)                   # 56
    enter_x = 8 + round(0.4 / 0.5 * 120)                    # 104
    assert tuple(image[y, fill_end - 2]) == GREEN            # score below exit: green (not active)
    assert tuple(image[y, fill_end + 4]) == (0, 0, 0)       # the rest of the bar is empty (black)
    assert tuple(image[y, enter_x]) == (255, 255, 255)       # enter threshold tick


def test_nan_score_and_latency_do_not_break_the_picture():
    state = OverlayState(action='CONTINUE', latency_ms=math.nan, scores=(Score('STOP', math.nan, 0.4, 0.3),))
    assert decoded(state).shape == (H, W, 3)


def test_a_bad_image_fails_with_the_reason():
    with pytest.raises(ValueError, match='JPEG'):
        encode_jpeg(np.zeros((0, 0, 3), np.uint8))
