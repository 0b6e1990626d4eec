"""What a detector found, in normalised image coordinates, and which policy regions it belongs to.

Pure module (numpy only). Coordinates are fractions of the image, x right, y down, like the regions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

# A detection belongs to a region when its foot point is inside, or when at least this fraction of its box
# is. The foot point is what matters on the ground ("a person in the near zone"); the overlap catches what
# has no foot in view (a person cut off by the image's bottom edge, a car filling a roadside region).
MIN_BOX_OVERLAP = 0.5
_GRID = 5     # overlap is estimated on a 5x5 grid of points in the box: 4 % steps, ample for a 0.5 cut


@dataclass(frozen=True)
class Detection:
    """One detected object. `foot_margin`: fraction of the box height between the box's bottom edge and
    where the object touches the ground (0 for tight boxes; HOG's window leaves 1/8 below the feet)."""
    x0: float
    y0: float
    x1: float
    y1: float
    confidence: float
    label: str = 'person'
    foot_margin: float = 0.0
    regions: tuple[str, ...] = ()      # the policy regions it belongs to (filled in by `assign_regions`)

    @property
    def foot(self) -> tuple[float, float]:
        """Where the object stands: the bottom centre of the box, raised by the detector's margin."""
        return ((self.x0 + self.x1) / 2.0, self.y1 - (self.y1 - self.y0) * self.foot_margin)

    def overlap(self, region) -> float:
        """Fraction of the box inside `region` (a perception.regions.Region), on a grid of sample points."""
        steps = (np.arange(_GRID) + 0.5) / _GRID
        xs, ys = np.meshgrid(self.x0 + (self.x1 - self.x0) * steps, self.y0 + (self.y1 - self.y0) * steps)
        return float(region.contains_points(xs.ravel(), ys.ravel()).mean())

    def in_region(self, region, min_overlap: float = MIN_BOX_OVERLAP) -> bool:
        return region.contains(*self.foot) or self.overlap(region) >= min_overlap


def assign_regions(detections: Sequence[Detection], regions: Sequence,
                   min_overlap: float = MIN_BOX_OVERLAP) -> list[Detection]:
    """The detections with `regions` set to the names of the regions each belongs to, in the order given."""
    return [replace(d, regions=tuple(r.name for r in regions if d.in_region(r, min_overlap))) for d in detections]
