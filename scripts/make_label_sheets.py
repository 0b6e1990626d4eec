#!/usr/bin/env python3
"""Make contact sheets of a video for labelling near-zone presence by eye.

Each sampled frame gets the near-zone polygon drawn on it (red, 2 px) and a
caption with the frame index and media time (index / fps).  Frames are scaled
to ~384 px wide and tiled into contact-sheet PNGs (``--cols`` x ``--rows`` per
sheet).  Optionally a crop (normalised x0,y0,x1,y1) is taken before scaling,
to zoom into an ambiguous region.

Example (coarse pass, every 10 frames over the whole video)::

    python scripts/make_label_sheets.py \\
        --video /usr/share/doc/opencv-doc/examples/data/vtest.avi \\
        --start 0 --end 795 --step 10 --out-dir /tmp/sheets/coarse

The labels in test/data/vtest_near_zone_labels.yaml were made by looking at
the sheets this script writes; no detector was involved.
"""

import argparse
import os

import cv2
import numpy as np

# Normalised (x right, y down) polygon: the grass below the road's near edge.
NEAR_ZONE = [(0.0, 0.47), (1.0, 0.90), (1.0, 1.0), (0.0, 1.0)]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default="/usr/share/doc/opencv-doc/examples/data/vtest.avi")
    p.add_argument("--start", type=int, default=0, help="first frame index (inclusive)")
    p.add_argument("--end", type=int, default=None, help="last frame index (exclusive)")
    p.add_argument("--step", type=int, default=10, help="sample every STEP frames")
    p.add_argument("--out-dir", default="label_sheets")
    p.add_argument("--cols", type=int, default=4, help="tiles per row")
    p.add_argument("--rows", type=int, default=4, help="rows per sheet")
    p.add_argument("--width", type=int, default=384, help="tile width in px")
    p.add_argument("--fps", type=float, default=None,
                   help="override fps used for media time (default: from the file)")
    p.add_argument("--crop", default=None,
                   help="normalised crop x0,y0,x1,y1 applied before scaling (zoom)")
    p.add_argument("--prefix", default="sheet")
    return p.parse_args()


def annotate(frame, crop):
    h, w = frame.shape[:2]
    img = frame.copy()
    pts = np.array([[round(x * (w - 1)), round(y * (h - 1))] for x, y in NEAR_ZONE],
                   dtype=np.int32)
    cv2.polylines(img, [pts], isClosed=True, color=(0, 0, 255), thickness=2)
    if crop is not None:
        x0, y0, x1, y1 = crop
        img = img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)]
    return img


def caption(tile, idx, fps):
    text = "f%d  t=%.1fs" % (idx, idx / fps)
    cv2.rectangle(tile, (0, 0), (len(text) * 11 + 8, 22), (0, 0, 0), -1)
    cv2.putText(tile, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def main():
    a = parse_args()
    cap = cv2.VideoCapture(a.video)
    if not cap.isOpened():
        raise SystemExit("cannot open %s" % a.video)
    fps = a.fps or cap.get(cv2.CAP_PROP_FPS) or 10.0
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    end = n if a.end is None else min(a.end, n)
    crop = tuple(float(v) for v in a.crop.split(",")) if a.crop else None
    wanted = set(range(a.start, end, a.step))
    os.makedirs(a.out_dir, exist_ok=True)

    per_sheet = a.cols * a.rows
    tiles, sheet_no, written = [], 0, []

    def flush():
        nonlocal tiles, sheet_no
        if not tiles:
            return
        th, tw = tiles[0][1].shape[:2]
        sheet = np.zeros((a.rows * th, a.cols * tw, 3), np.uint8)
        for k, (_, t) in enumerate(tiles):
            r, c = divmod(k, a.cols)
            sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = t
        first, last = tiles[0][0], tiles[-1][0]
        path = os.path.join(a.out_dir, "%s_%03d_f%04d-f%04d.png" % (a.prefix, sheet_no, first, last))
        cv2.imwrite(path, sheet)
        written.append(path)
        sheet_no += 1
        tiles = []

    # Decode sequentially (seeking in MJPEG/XVID AVIs is not always exact).
    idx = 0
    while idx < end:
        ok, frame = cap.read()
        if not ok:
            break
        if idx in wanted:
            img = annotate(frame, crop)
            h, w = img.shape[:2]
            scale = a.width / float(w)
            tile = cv2.resize(img, (a.width, int(round(h * scale))),
                              interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
            tiles.append((idx, caption(tile, idx, fps)))
            if len(tiles) == per_sheet:
                flush()
        idx += 1
    flush()
    cap.release()
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
