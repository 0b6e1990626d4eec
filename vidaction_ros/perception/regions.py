"""Regions of interest: named polygons in normalised image coordinates.

Coordinates are fractions of the image: x to the right, y down, both in [0, 1], so one policy file works at
any working resolution. A region is used two ways: the embedder crops the region's bounding box and embeds
the crop (`pixel_bbox`), and detections are assigned to a region by a point (e.g. a person's foot point,
`contains`) or a pixel mask (`mask`). The empty name `FULL_FRAME` means the whole image.

Pure module: numpy only, no ROS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FULL_FRAME = ''           # region name meaning "the whole image" (Action.region, rules without a region)

# Tolerance for "on the boundary" tests. Coordinates are fractions of the image, so 1e-9 is far below a
# pixel at any resolution while still absorbing the rounding of the edge equation.
_EPS = 1e-9
# Smallest accepted polygon area (fraction of the image). Below this the polygon is degenerate (collinear
# or repeated vertices): its crop would be empty and "inside" would mean "on a line".
_MIN_AREA = 1e-9


@dataclass(frozen=True)
class Region:
    """A named simple polygon in normalised image coordinates (x right, y down, 0..1).

    The polygon is an open ring: the last vertex connects back to the first. A closing vertex equal to the
    first (GeoJSON style) is accepted and dropped. Raises ValueError naming the region and the problem when
    the polygon has fewer than 3 distinct vertices, a vertex outside [0, 1], a non-number, zero area or
    crossing edges.
    """

    name: str
    polygon: tuple[tuple[float, float], ...]

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise ValueError(f'region name must be a string, got {self.name!r} ({type(self.name).__name__})')
        label = f'region {self.name!r}' if self.name else 'full-frame region'
        try:
            raw = list(self.polygon)
        except TypeError:
            raise ValueError(f'{label}: polygon must be a sequence of [x, y] vertices, '
                             f'got {type(self.polygon).__name__}') from None
        vertices = []
        for i, vertex in enumerate(raw):
            vertices.append(_vertex(label, i, vertex))
        # A closed ring (last == first) is the same polygon as the open one; keep the canonical open form.
        if len(vertices) >= 2 and vertices[0] == vertices[-1]:
            vertices.pop()
        if len(vertices) < 3:
            raise ValueError(f'{label}: polygon needs at least 3 vertices, got {len(vertices)}')
        for i, a in enumerate(vertices):
            b = vertices[(i + 1) % len(vertices)]
            if a == b:
                raise ValueError(f'{label}: vertices {i} and {(i + 1) % len(vertices)} are the same point {a}')
        area = abs(_signed_area(vertices))
        if area < _MIN_AREA:
            raise ValueError(f'{label}: polygon has zero area (collinear vertices?): {vertices}')
        crossing = _first_crossing(vertices)
        if crossing is not None:
            raise ValueError(f'{label}: polygon edges {crossing[0]} and {crossing[1]} cross each other; '
                             f'a region must be a simple polygon: {vertices}')
        object.__setattr__(self, 'polygon', tuple(vertices))

    # -- geometry ------------------------------------------------------------------------------------
    @property
    def area(self) -> float:
        """Area as a fraction of the image (0..1]."""
        return abs(_signed_area(self.polygon))

    def contains(self, x: float, y: float) -> bool:
        """Whether the normalised point (x, y) lies inside the polygon or on its boundary."""
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)):
            return False
        return bool(_contains(self.polygon, np.array([x]), np.array([y]))[0])

    def contains_points(self, xs, ys) -> np.ndarray:
        """Vectorised `contains`: a boolean array, one entry per (x, y) pair."""
        return _contains(self.polygon, np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64))

    def bbox(self) -> tuple[float, float, float, float]:
        """Normalised bounding box (x0, y0, x1, y1) of the polygon."""
        xs = [p[0] for p in self.polygon]
        ys = [p[1] for p in self.polygon]
        return min(xs), min(ys), max(xs), max(ys)

    def pixel_bbox(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Pixel bounding box (x0, y0, x1, y1) for an image of width x height, half-open (x1, y1 excluded)
        so `image[y0:y1, x0:x1]` is the crop. Every pixel the polygon touches is included (floor/ceil),
        the box is clipped to the image, and it always has at least one pixel per side so a crop is never
        empty (a sliver region still yields a 1-pixel crop instead of crashing the model)."""
        width, height = _image_size(width, height)
        bx0, by0, bx1, by1 = self.bbox()
        x0, x1 = _span(bx0, bx1, width)
        y0, y1 = _span(by0, by1, height)
        return x0, y0, x1, y1

    def mask(self, width: int, height: int) -> np.ndarray:
        """Boolean (height, width) mask: True where the pixel centre lies inside the polygon (boundary
        inclusive). Cached per (polygon, size) and returned read-only, so calling it every frame costs a
        dictionary lookup; copy it before modifying."""
        width, height = _image_size(width, height)
        return _mask(self.polygon, width, height)


def full_frame_region() -> Region:
    """The whole image as a Region named FULL_FRAME ("")."""
    return Region(FULL_FRAME, ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)))


# -- helpers -----------------------------------------------------------------------------------------------
def _is_number(v) -> bool:
    # bool is an int subclass; True as a coordinate is a typo, not 1.0.
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _vertex(label: str, i: int, vertex) -> tuple[float, float]:
    if isinstance(vertex, (str, bytes)) or not hasattr(vertex, '__len__') or len(vertex) != 2:
        raise ValueError(f'{label}: vertex {i} must be [x, y], got {vertex!r}')
    x, y = vertex
    if not (_is_number(x) and _is_number(y)):
        raise ValueError(f'{label}: vertex {i} must be two numbers, got {vertex!r}')
    x, y = float(x), float(y)
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):   # also rejects NaN
        raise ValueError(f'{label}: vertex {i} ({x}, {y}) is outside the image; normalised coordinates '
                         f'must be within [0, 1]')
    return x, y


def _signed_area(poly) -> float:
    # Shoelace formula.
    s = 0.0
    n = len(poly)
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        s += x0 * y1 - x1 * y0
    return 0.5 * s


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _on_segment(p, a, b) -> bool:
    return (min(a[0], b[0]) - _EPS <= p[0] <= max(a[0], b[0]) + _EPS
            and min(a[1], b[1]) - _EPS <= p[1] <= max(a[1], b[1]) + _EPS)


def _segments_intersect(a, b, c, d) -> bool:
    d1, d2 = _cross(c, d, a), _cross(c, d, b)
    d3, d4 = _cross(a, b, c), _cross(a, b, d)
    if ((d1 > _EPS and d2 < -_EPS) or (d1 < -_EPS and d2 > _EPS)) and \
            ((d3 > _EPS and d4 < -_EPS) or (d3 < -_EPS and d4 > _EPS)):
        return True
    # Touching or collinear overlap.
    return ((abs(d1) <= _EPS and _on_segment(a, c, d)) or (abs(d2) <= _EPS and _on_segment(b, c, d))
            or (abs(d3) <= _EPS and _on_segment(c, a, b)) or (abs(d4) <= _EPS and _on_segment(d, a, b)))


def _first_crossing(poly):
    """First pair of non-adjacent edges that touch or cross (a simple polygon has none); O(n^2), n small."""
    n = len(poly)
    edges = [(poly[i], poly[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue   # adjacent edges share a vertex by construction
            if _segments_intersect(*edges[i], *edges[j]):
                return i, j
    return None


def _contains(poly, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Vectorised point-in-polygon: even-odd ray casting plus an explicit on-boundary test, because ray
    casting alone classifies boundary points inconsistently (left/top edges in, right/bottom out)."""
    inside = np.zeros(px.shape, dtype=bool)
    on_edge = np.zeros(px.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        xa, ya = poly[i]
        xb, yb = poly[(i + 1) % n]
        # Boundary: collinear with the edge (distance below _EPS) and within its bounding box.
        length = math.hypot(xb - xa, yb - ya)
        cross = (xb - xa) * (py - ya) - (yb - ya) * (px - xa)
        on_edge |= ((np.abs(cross) <= _EPS * length)
                    & (px >= min(xa, xb) - _EPS) & (px <= max(xa, xb) + _EPS)
                    & (py >= min(ya, yb) - _EPS) & (py <= max(ya, yb) + _EPS))
        # Ray to +x: count edges that straddle the point's y (half-open rule, so a vertex counts once).
        straddles = (ya > py) != (yb > py)
        if ya != yb:
            x_at_y = xa + (py - ya) * (xb - xa) / (yb - ya)
            inside ^= straddles & (px < x_at_y)
    return inside | on_edge


@lru_cache(maxsize=64)
def _mask(poly, width: int, height: int) -> np.ndarray:
    xs = (np.arange(width, dtype=np.float64) + 0.5) / width
    ys = (np.arange(height, dtype=np.float64) + 0.5) / height
    px, py = np.meshgrid(xs, ys)
    mask = _contains(poly, px, py)
    mask.flags.writeable = False   # shared by every caller through the cache
    return mask


def _image_size(width, height) -> tuple[int, int]:
    for label, v in (('width', width), ('height', height)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v <= 0:
            raise ValueError(f'image {label} must be a positive integer, got {v!r}')
    return int(width), int(height)


def _span(lo: float, hi: float, size: int) -> tuple[int, int]:
    # Snap values within _EPS of a pixel edge first, so 0.5 * 640 computed as 319.99999999 stays 320.
    a = int(math.floor(lo * size + _EPS))
    b = int(math.ceil(hi * size - _EPS))
    a = min(max(a, 0), size - 1)
    b = min(max(b, a + 1), size)
    return a, b
