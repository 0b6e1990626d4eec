"""Regions: point-in-polygon, bounding boxes and masks checked from first principles (no ROS)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidaction_ros.perception.regions import FULL_FRAME, Region, full_frame_region

SQUARE = ((0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75))
# An L shape (concave): the unit square's lower-left quadrant plus a strip, with the notch at top right.
L_SHAPE = ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0))
# The demo policy's near zone: the grass below the road's near edge.
NEAR_ZONE = ((0.0, 0.47), (1.0, 0.90), (1.0, 1.0), (0.0, 1.0))


def test_full_frame_name_is_empty():
    assert FULL_FRAME == ''
    r = full_frame_region()
    assert r.name == FULL_FRAME and r.bbox() == (0.0, 0.0, 1.0, 1.0) and r.area == 1.0
    assert r.pixel_bbox(640, 480) == (0, 0, 640, 480)


def test_square_contains_interior_and_rejects_exterior():
    r = Region('sq', SQUARE)
    assert r.contains(0.5, 0.5)
    assert r.contains(0.3, 0.7)
    for x, y in [(0.1, 0.5), (0.9, 0.5), (0.5, 0.1), (0.5, 0.9), (0.0, 0.0), (1.0, 1.0)]:
        assert not r.contains(x, y), (x, y)


@pytest.mark.parametrize('x, y', [
    (0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75),   # vertices
    (0.5, 0.25), (0.75, 0.5), (0.5, 0.75), (0.25, 0.5),       # mid-edges: all four sides, not just left/top
])
def test_boundary_is_inclusive(x, y):
    assert Region('sq', SQUARE).contains(x, y)


def test_just_outside_the_boundary_is_out():
    r = Region('sq', SQUARE)
    assert not r.contains(0.75 + 1e-6, 0.5)
    assert not r.contains(0.5, 0.25 - 1e-6)


def test_concave_polygon_notch_is_outside():
    r = Region('L', L_SHAPE)
    assert r.contains(0.25, 0.25)      # upper-left arm
    assert r.contains(0.75, 0.75)      # lower-right arm
    assert not r.contains(0.75, 0.25)  # the notch
    assert r.contains(0.5, 0.25) and r.contains(0.75, 0.5)   # the notch's edges are boundary
    # Area by first principles: unit square minus the 0.5 x 0.5 notch.
    assert r.area == pytest.approx(0.75)


def test_near_zone_by_the_edge_equation():
    # Upper edge from (0, 0.47) to (1, 0.90): y = 0.47 + 0.43 x. Inside means below it (y down).
    r = Region('near_zone', NEAR_ZONE)
    for x in (0.0, 0.2, 0.5, 0.8, 1.0):
        edge = 0.47 + 0.43 * x
        assert r.contains(x, min(1.0, edge + 0.01))
        assert not r.contains(x, edge - 0.01)
    assert r.bbox() == (0.0, 0.47, 1.0, 1.0)
    # Trapezoid area: mean height of the band times its width.
    assert r.area == pytest.approx(((1 - 0.47) + (1 - 0.90)) / 2)


def test_non_finite_point_is_outside():
    r = full_frame_region()
    assert not r.contains(float('nan'), 0.5)
    assert not r.contains(0.5, float('inf'))


def test_closed_ring_is_accepted_and_canonicalised():
    r = Region('closed', SQUARE + (SQUARE[0],))
    assert r.polygon == SQUARE


def test_lists_are_converted_to_tuples_and_region_is_hashable():
    r = Region('sq', [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]])
    assert r.polygon == SQUARE and hash(r) == hash(Region('sq', SQUARE))


def test_bbox_and_pixel_bbox():
    r = Region('sq', SQUARE)
    assert r.bbox() == (0.25, 0.25, 0.75, 0.75)
    assert r.pixel_bbox(640, 480) == (160, 120, 480, 360)
    # Fractional pixel edges: include every pixel the polygon touches (floor the start, ceil the end).
    r = Region('odd', ((0.1, 0.1), (0.55, 0.1), (0.55, 0.55)))
    assert r.pixel_bbox(10, 10) == (1, 1, 6, 6)
    assert r.pixel_bbox(7, 3) == (0, 0, 4, 2)   # 0.7 -> 0, 3.85 -> 4; 0.3 -> 0, 1.65 -> 2


def test_pixel_bbox_crop_matches_numpy_slicing():
    img = np.arange(48 * 64).reshape(48, 64)
    x0, y0, x1, y1 = Region('near_zone', NEAR_ZONE).pixel_bbox(64, 48)
    crop = img[y0:y1, x0:x1]
    assert crop.shape == (48 - 22, 64)   # floor(0.47 * 48) = 22


def test_pixel_bbox_of_a_sliver_has_nonzero_size_and_stays_in_the_image():
    # Thinner than a pixel at the right edge of the image.
    r = Region('sliver', ((0.9999, 0.0), (1.0, 0.0), (1.0, 1.0)))
    x0, y0, x1, y1 = r.pixel_bbox(100, 50)
    assert 0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 50
    assert (x0, x1) == (99, 100)
    r = Region('top', ((0.0, 0.0), (1.0, 0.0), (0.5, 0.001)))
    x0, y0, x1, y1 = r.pixel_bbox(10, 10)
    assert (y0, y1) == (0, 1) and (x0, x1) == (0, 10)


@pytest.mark.parametrize('w, h', [(0, 10), (10, -1), (10.0, 10), (True, 10)])
def test_pixel_bbox_rejects_bad_sizes(w, h):
    with pytest.raises(ValueError, match='width|height'):
        Region('sq', SQUARE).pixel_bbox(w, h)


def test_mask_matches_contains_on_pixel_centres_and_area():
    r = Region('L', L_SHAPE)
    m = r.mask(40, 20)
    assert m.shape == (20, 40) and m.dtype == bool
    for j in range(20):
        for i in range(40):
            assert m[j, i] == r.contains((i + 0.5) / 40, (j + 0.5) / 20)
    assert m.mean() == pytest.approx(r.area, abs=0.02)


def test_mask_is_cached_and_read_only():
    r = Region('sq', SQUARE)
    a = r.mask(32, 16)
    assert r.mask(32, 16) is a
    assert Region('other-name-same-shape', SQUARE).mask(32, 16) is a
    with pytest.raises(ValueError):
        a[0, 0] = True
    assert a.sum() == 16 * 8   # pixel centres strictly inside [0.25, 0.75]^2: 16 columns x 8 rows


@pytest.mark.parametrize('polygon, problem', [
    (((0.0, 0.0), (1.0, 0.0)), 'at least 3 vertices'),
    ((), 'at least 3 vertices'),
    (((0.0, 0.0), (1.0, 0.0), (1.0, 1.2)), 'outside the image'),
    (((-0.1, 0.0), (1.0, 0.0), (1.0, 1.0)), 'outside the image'),
    (((0.0, 0.0), (0.5, 0.5), (1.0, 1.0)), 'zero area'),
    (((0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0)), 'zero area'),        # symmetric bow tie
    (((0.0, 0.0), (1.0, 1.0), (1.0, 0.5), (0.0, 1.0)), 'cross'),            # lopsided bow tie, area 0.25
    (((0.0, 0.0), (1.0, 0.0), (1.0, 0.0), (1.0, 1.0)), 'same point'),
    (((0.0, 0.0), (1.0, 0.0), (float('nan'), 1.0)), 'outside the image'),
    (((0.0, 0.0), (1.0, 0.0), ('a', 1.0)), 'two numbers'),
    (((0.0, 0.0), (1.0, 0.0), (True, 1.0)), 'two numbers'),
    (((0.0, 0.0), (1.0, 0.0), (1.0,)), r'\[x, y\]'),
    (42, 'sequence'),
])
def test_invalid_polygons_name_the_region_and_the_problem(polygon, problem):
    with pytest.raises(ValueError, match=problem) as err:
        Region('zone_a', polygon)
    assert "'zone_a'" in str(err.value)


def test_name_must_be_a_string():
    with pytest.raises(ValueError, match='name'):
        Region(3, SQUARE)


coord = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(x0=coord, x1=coord, y0=coord, y1=coord, px=coord, py=coord)
def test_axis_aligned_rectangle_law(x0, x1, y0, y1, px, py):
    """For a rectangle, containment is exactly the interval test (boundary inclusive)."""
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if (x1 - x0) * (y1 - y0) < 1e-6:
        return
    r = Region('rect', ((x0, y0), (x1, y0), (x1, y1), (x0, y1)))
    # The boundary is inclusive with a 1e-9 tolerance (far below a pixel); judge only points clear of it.
    near_edge = min(abs(px - x0), abs(px - x1), abs(py - y0), abs(py - y1)) < 1e-8
    if not near_edge:
        assert r.contains(px, py) == (x0 <= px <= x1 and y0 <= py <= y1)
    assert r.contains(x0, y0) and r.contains(x1, y1)        # corners
    if min(abs(px - x0), abs(px - x1)) >= 1e-8:
        assert r.contains(px, y0) == (x0 <= px <= x1)          # along the top edge
    assert r.bbox() == (x0, y0, x1, y1)
    bx0, by0, bx1, by1 = r.pixel_bbox(97, 61)
    assert 0 <= bx0 < bx1 <= 97 and 0 <= by0 < by1 <= 61
    assert bx0 <= x0 * 97 + 1e-6 and bx1 >= x1 * 97 - 1e-6


@settings(max_examples=200, deadline=None)
@given(a=st.tuples(coord, coord), b=st.tuples(coord, coord), c=st.tuples(coord, coord), u=coord, v=coord)
def test_triangle_barycentric_law(a, b, c, u, v):
    """Points built as convex combinations of the vertices are inside; the centroid is inside."""
    area2 = abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
    if area2 < 1e-4:
        return
    r = Region('tri', (a, b, c))
    if u + v > 1:
        u, v = 1 - u, 1 - v
    p = (a[0] + u * (b[0] - a[0]) + v * (c[0] - a[0]), a[1] + u * (b[1] - a[1]) + v * (c[1] - a[1]))
    assert r.contains(*p)
    assert r.contains((a[0] + b[0] + c[0]) / 3, (a[1] + b[1] + c[1]) / 3)
    # Reflect the centroid through vertex a, far enough to leave the triangle: outside.
    g = ((a[0] + b[0] + c[0]) / 3, (a[1] + b[1] + c[1]) / 3)
    q = (2 * a[0] - g[0], 2 * a[1] - g[1])
    if 0 <= q[0] <= 1 and 0 <= q[1] <= 1 and (abs(q[0] - a[0]) + abs(q[1] - a[1])) > 1e-6:
        assert not r.contains(*q)
