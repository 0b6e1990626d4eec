#!/usr/bin/env bash
# Regenerate the committed replay fixture test/data/vtest_replay/ from OpenCV's demo clip.
# Provenance and the reasons for each choice: test/data/README.md, section "vtest_replay/".
#   bash test/data/make_vtest_replay.sh        (after scripts/setup_env.sh; overwrites the fixture)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VIDEO=/usr/share/doc/opencv-doc/examples/data/vtest.avi
OUT="$HERE/vtest_replay"
# shellcheck disable=SC1091
source "$HERE/../../scripts/env.sh"
rm -rf "$OUT"
# Run outside the source tree: the installed package carries the generated messages.
cd /tmp
vidaction-bag from-video "$VIDEO" "$OUT" \
  --compressed --jpeg-quality 60 --width 640 \
  --start-s 46 --end-s 62 --step 2 \
  --topic /image_raw/compressed --frame-id camera --storage mcap
vidaction-bag info "$OUT"
