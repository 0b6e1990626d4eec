"""report.html for vidaction-eval (and the score page of vidaction-calibrate): one self-contained page a person
opens in a browser to see why — the timeline, the per-event table, and for every onset, miss and false alarm
a thumbnail of that frame with the overlay drawn on it (regions, detections, scores, the action), plus the
latency table. Pure: reads the bag's frames and the recorded Actions by their fields, no ROS.

The page marks itself when every image has loaded (<body data-images-loaded=N data-images-total=M>), so a
headless browser can check it.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

from .eval_report import _fmt
from .replay import _stamp_ns, _stamp_s

THUMB_WIDTH = 320
LOADED_SCRIPT = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
});
</script>"""
STYLE = """<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #bbb; padding: 3px 8px; text-align: left; }
.moments { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 320px; } figcaption { font-size: 0.85em; }
.onset { border-top: 4px solid #2a2; } .miss { border-top: 4px solid #a22; }
.false_alarm { border-top: 4px solid #e90; }
</style>"""


def moments(report: dict) -> list[dict]:
    """Every onset, miss and false alarm of the evaluated actions: {'kind', 'action', 'time_s'}."""
    out = []
    for name, ev in report['events'].items():
        false_alarms = set(ev.get('false_alarms', []))
        for t in ev.get('onsets', ev.get('onsets_s', [])):
            out.append({'kind': 'false_alarm' if t in false_alarms else 'onset', 'action': name, 'time_s': t})
        for sp in ev.get('spans', []):
            if sp['evaluated'] and not sp['detected']:
                out.append({'kind': 'miss', 'action': name, 'time_s': sp['start']})
    return sorted(out, key=lambda m: m['time_s'])


def nearest(frames: Sequence, time_s: float):
    """The decided frame (Action) nearest in time to time_s."""
    return min(frames, key=lambda a: abs(_stamp_s(a) - time_s)) if frames else None


def thumbnails(bag: str, frames: Sequence, wanted: list[dict], regions: dict, out_dir: Path,
               width: int = THUMB_WIDTH) -> list[dict]:
    """Draw the overlay of each wanted moment's frame (from the bag, matched by header stamp) and save it as
    thumbs/<n>_<kind>.jpg under out_dir. Returns the moments with 'file', 'sequence', 'decided', 'reason'."""
    import cv2
    from ..ingest.bags import read_frames
    from ..overlay.draw import encode_jpeg, render, state_from_action
    picks = [(m, nearest(frames, m['time_s'])) for m in wanted]
    by_stamp = {_stamp_ns(a): a for _, a in picks if a is not None}
    images = {}
    for frame in read_frames(bag):
        if frame.stamp_ns in by_stamp and frame.stamp_ns not in images:
            images[frame.stamp_ns] = frame.image
            if len(images) == len(by_stamp):
                break
    folder = out_dir / 'thumbs'
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, (moment, action) in enumerate(picks):
        if action is None or _stamp_ns(action) not in images:
            continue
        picture = render(images[_stamp_ns(action)], state_from_action(action, regions))
        h, w = picture.shape[:2]
        small = cv2.resize(picture, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        name = f'thumbs/{n:03d}_{moment["kind"]}.jpg'
        (out_dir / name).write_bytes(encode_jpeg(small, 85))
        out.append({**moment, 'file': name, 'sequence': int(action.frame_sequence), 'decided': action.action,
                    'frame_time_s': _stamp_s(action), 'reason': action.reason})
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], row_attr: str = '') -> str:
    head = ''.join(f'<th>{html.escape(h)}</th>' for h in header)
    body = ''.join(f'<tr{row_attr}>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in r) + '</tr>'
                   for r in rows)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def page(title: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>{STYLE}'
            f'{LOADED_SCRIPT}</head><body><h1>{html.escape(title)}</h1>' + '\n'.join(sections) + '</body></html>\n')


def eval_page(report: dict, thumbs: list[dict], timeline: str = 'timeline.png') -> str:
    s = report['stream']
    sections = [
        '<ul>'
        f'<li>bag: <code>{html.escape(report["bag"])}</code> ({s["frames_in_bag"]} frames)</li>'
        f'<li>policy: <code>{html.escape(str(report["policy"]))}</code>; labels: '
        f'<code>{html.escape(str(report["labels"]))}</code></li>'
        f'<li>stream: {s["frames_decided"]}/{s["frames_in_bag"]} frames decided, {s["duplicates"]} duplicate(s), '
        f'{"in order" if s["in_order"] else "OUT OF ORDER"}, {s["failsafes"]} failsafe(s)</li></ul>',
        f'<h2>Timeline</h2><img class="timeline" src="{html.escape(timeline)}" alt="every rule\'s score over time" '
        'style="max-width:100%">',
    ]
    for name, ev in report['events'].items():
        sections.append(f'<h2>{html.escape(name)}: events</h2>')
        if 'precision' in ev:
            sections.append(f'<p>precision {_fmt(ev["precision"])}, recall {_fmt(ev["recall"])}, '
                            f'F1 {_fmt(ev["f1"])} (tp {ev["tp"]}, fn {ev["fn"]}, fp {ev["fp"]})</p>')
            rows = [(f'{sp["start"]:.1f}–{sp["end"]:.1f} s', 'yes' if sp['detected'] else 'no',
                     _fmt(sp['first_fire_s'], 1, ' s'), _fmt(sp['lead_s'], 2, ' s'), sp.get('toggles', 0),
                     _fmt(sp.get('release_delay_s'), 2, ' s')) for sp in ev['spans']]
            sections.append(_table(('span', 'detected', 'first firing', 'lead', 'toggles', 'release delay'),
                                   rows, f' data-action="{html.escape(name)}" class="span"'))
    sections.append('<h2>Onsets, misses and false alarms</h2><div class="moments">')
    for t in thumbs:
        caption = (f'{t["kind"].replace("_", " ")} of {t["action"]} at {t["time_s"]:.1f} s — frame #{t["sequence"]} '
                   f'({t["frame_time_s"]:.1f} s) decided {t["decided"]}: {t["reason"]}')
        sections.append(f'<figure class="{t["kind"]}" data-kind="{t["kind"]}"><img src="{html.escape(t["file"])}" '
                        f'alt="{html.escape(caption)}" width="{THUMB_WIDTH}"><figcaption>{html.escape(caption)}'
                        '</figcaption></figure>')
    sections.append('</div>' if thumbs else '<p>none</p></div>')
    rows = [(key, st['n'], _fmt(st['p50'], 1), _fmt(st['p90'], 1), _fmt(st['p99'], 1), _fmt(st['max'], 1))
            for key, st in report['latency_ms'].items()]
    sections.append('<h2>Latency per stage (ms)</h2>' + _table(('stage', 'n', 'p50', 'p90', 'p99', 'max'), rows,
                                                                 ' class="latency"'))
    return page(f'Replay evaluation: {Path(report["bag"]).name}', sections)


def calibrate_page(result_yaml: str, files: dict[str, str]) -> str:
    """vidaction-calibrate's page: its score plots and the thresholds it suggests."""
    images = [f'<h2>{html.escape(Path(p).stem)}</h2><img src="{html.escape(Path(p).name)}" style="max-width:100%">'
              for k, p in files.items() if str(p).endswith('.png')]
    return page('Calibration', images + ['<h2>Suggested thresholds</h2><pre>' + html.escape(result_yaml) +
                                         '</pre>'])
