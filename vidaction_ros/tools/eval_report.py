"""The vidaction-eval report on a replay: the stream checks, latency per stage and event metrics (report.json),
their Markdown rendering (report.md) and the timeline plot of every rule's score (timeline.png).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .eval_metrics import LATENCY_FIELDS, Labels, Tolerances, event_metrics, frame_metrics, latency_table
from .replay import WATCHDOG, RunOptions, RunRecord, _stamp_s

STAGE_NAMES = {'capture_to_embed_ms': 'capture -> embed start', 'embed_ms': 'embed',
               'embed_to_decide_ms': 'embed end -> decided (memory + policy)',
               'capture_to_decide_ms': 'capture -> Action'}


# -- report --------------------------------------------------------------------------------------------------------
def per_frame(actions: list) -> tuple[list, dict]:
    """The first decision per frame in frame order, and stream checks (duplicates, order, failsafes)."""
    decisions = [a for a in actions if a.trigger != WATCHDOG]
    first: dict[int, object] = {}
    for a in decisions:
        first.setdefault(int(a.frame_sequence), a)
    seqs = [int(a.frame_sequence) for a in decisions]
    checks = {
        'actions_received': len(actions),
        'failsafes': len(actions) - len(decisions),
        'frames_decided': len(first),
        'duplicates': len(decisions) - len(first),
        'in_order': all(b > a for a, b in zip(seqs, seqs[1:])),
    }
    return [first[k] for k in sorted(first)], checks


def choose_actions(spec, labels: Labels | None, names: Sequence[str] | None) -> list[str]:
    from .thresholds import choose_rules
    return choose_rules(spec, labels, names) if (names or labels is not None) else \
        [max(spec.rules, key=lambda r: r.priority).name]


def build_report(record: RunRecord, spec, bag: str, labels: Labels | None, evaluated: list[str],
                 tol: Tolerances, decisions_rescored: dict | None, opts: RunOptions) -> dict:
    from ..ingest.bags import bag_info
    frames, checks = per_frame(record.actions)
    times = [_stamp_s(a) for a in frames]
    seqs = [int(a.frame_sequence) for a in frames]
    checks['frames_in_bag'] = record.frames_expected
    checks['missing'] = sorted(set(range(record.frames_expected)) - set(seqs))
    checks['complete'] = not checks['missing'] and checks['duplicates'] == 0
    counts: dict[str, int] = {}
    for a in frames:
        counts[a.action] = counts.get(a.action, 0) + 1
    rows = [{f: float(getattr(a, f)) for f in LATENCY_FIELDS} for a in frames]
    info = bag_info(bag)
    report = {
        'bag': str(bag), 'bag_start_s': info.start_ns / 1e9, 'bag_end_s': info.end_ns / 1e9,
        'policy': spec.source, 'labels': labels.source if labels is not None else None,
        'mode': opts.mode, 'sets': list(opts.sets), 'wall_s': round(record.wall_s, 2),
        'pipeline_exit_code': record.pipeline_exit,
        'stream': checks,
        'first_stamp_s': times[0] if times else None, 'last_stamp_s': times[-1] if times else None,
        'decisions': counts,
        'latency_ms': latency_table(rows),
        'evaluated_actions': evaluated,
        'events': {}, 'frames': {},
        'rules': {r.name: {'enter': getattr(r, 'enter', getattr(r, 'below_similarity', None)),
                           'exit': getattr(r, 'exit', getattr(r, 'exit_similarity', None)),
                           'priority': r.priority} for r in spec.rules},
    }
    for name in evaluated:
        active = [a.action == name for a in frames]
        onsets = [t for t, on, prev in zip(times, active, [False] + active[:-1]) if on and not prev]
        entry = {'onsets_s': onsets, 'frames_active': int(sum(active))}
        if labels is not None:
            entry = event_metrics(times, active, labels.spans, labels.ambiguous, tol, action=name).as_dict()
            report['frames'][name] = frame_metrics(times, active, labels.spans, labels.ambiguous)
        report['events'][name] = entry
    if decisions_rescored is not None:
        agree = sum(1 for a in frames if int(a.frame_sequence) in decisions_rescored
                    and decisions_rescored[int(a.frame_sequence)].action == a.action)
        report['rescored'] = {'frames': len(decisions_rescored), 'agree_with_actions': agree}
    return report


def _fmt(x, nd=3, unit='') -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return 'n/a'
    return f'{x:.{nd}f}{unit}' if isinstance(x, float) else f'{x}{unit}'


def report_markdown(report: dict, files: dict) -> str:
    s = report['stream']
    lines = [f'# Replay evaluation: `{Path(report["bag"]).name}`', '',
             f'- bag: `{report["bag"]}` ({report["bag_start_s"]:.1f}–{report["bag_end_s"]:.1f} s, '
             f'{s["frames_in_bag"]} frames)',
             f'- policy: `{report["policy"]}`; labels: '
             + (f'`{report["labels"]}`' if report['labels'] else 'none'),
             f'- pipeline: `{report["mode"]}`, lock-step (every frame, header stamps); wall time '
             f'{report["wall_s"]:.1f} s' + (f'; `--set {" ".join(report["sets"])}`' if report['sets'] else ''),
             f'- stream: {s["frames_decided"]}/{s["frames_in_bag"]} frames decided, {s["duplicates"]} duplicate(s), '
             f'{"in order" if s["in_order"] else "OUT OF ORDER"}, {s["failsafes"]} failsafe(s), '
             f'missing {s["missing"] or "none"}',
             '- decisions per action: ' + ', '.join(f'{k} {v}' for k, v in sorted(report['decisions'].items())),
             '']
    if 'rescored' in report:
        r = report['rescored']
        lines += [f'- re-scored from the memory contexts: {r["frames"]} frames, decision agrees with the Action on '
                  f'{r["agree_with_actions"]}', '']
    lines += ['## Latency per stage (ms, from the Action fields)', '', '| stage | n | p50 | p90 | p99 | max |',
              '|---|---|---|---|---|---|']
    for key, st in report['latency_ms'].items():
        lines.append(f'| {STAGE_NAMES.get(key, key)} (`{key}`) | {st["n"]} | {_fmt(st["p50"], 1)} | '
                     f'{_fmt(st["p90"], 1)} | {_fmt(st["p99"], 1)} | {_fmt(st["max"], 1)} |')
    lines.append('')
    for name, ev in report['events'].items():
        lines += [f'## {name}', '']
        if 'precision' not in ev:
            lines += [f'- fired at {", ".join(f"{t:.1f} s" for t in ev["onsets_s"]) or "never"}; active on '
                      f'{ev["frames_active"]} frames (no labels: no precision/recall)', '']
            continue
        tol = ev['tolerances']
        lead = ev['lead_time_s']
        lines += [f'- event precision {_fmt(ev["precision"])}, recall {_fmt(ev["recall"])}, F1 {_fmt(ev["f1"])} '
                  f'(tp {ev["tp"]}, fn {ev["fn"]}, fp {ev["fp"]}; refires {ev["refires"]})',
                  '- lead time (labelled start − first firing; negative = late): '
                  + (f'mean {lead["mean"]:+.2f} s, min {lead["min"]:+.2f} s, max {lead["max"]:+.2f} s'
                     if lead else 'n/a'),
                  f'- false alarms at: {", ".join(f"{t:.1f} s" for t in ev["false_alarms"]) or "none"}',
                  f'- steadiness: {ev.get("toggles", 0)} toggle(s) inside labelled spans (onsets after the first); '
                  'release delay (release − labelled end; negative = released early): '
                  + (f'mean {rel["mean"]:+.2f} s, min {rel["min"]:+.2f} s, max {rel["max"]:+.2f} s'
                     if (rel := ev.get('release_delay_s')) else 'n/a'),
                  f'- rules: detected if active within [start − {tol["before_s"]:g} s, '
                  + (f'min(end, start + {tol["max_delay_s"]:g} s)]' if tol['max_delay_s'] is not None else 'end]')
                  + f'; a firing outside every span [start − {tol["before_s"]:g} s, end + {tol["after_s"]:g} s] '
                  f'(ambiguous spans too) is a false alarm', '',
                  '| span | evaluated | detected | first firing | lead | toggles | frame recall after first '
                  '| release delay | note |', '|---|---|---|---|---|---|---|---|---|']
        for sp in ev['spans']:
            lines.append(f'| {sp["start"]:.1f}–{sp["end"]:.1f} s | {"yes" if sp["evaluated"] else "no"}'
                         f'{" (truncated)" if sp["truncated"] else ""} | {"yes" if sp["detected"] else "no"} | '
                         f'{_fmt(sp["first_fire_s"], 1, " s")} | {_fmt(sp["lead_s"], 2, " s")} | '
                         f'{sp.get("toggles", 0) if sp["detected"] else "–"} | '
                         f'{_fmt(sp.get("frame_recall_after_first"))} | {_fmt(sp.get("release_delay_s"), 2, " s")} | '
                         f'{sp["note"][:60]} |')
        fm = report['frames'].get(name)
        if fm:
            lines += ['', f'Frames (ambiguous ignored): tp {fm["tp"]}, fp {fm["fp"]}, fn {fm["fn"]}, tn {fm["tn"]}; '
                      f'precision {_fmt(fm["precision"])}, recall {_fmt(fm["recall"])}.']
        lines.append('')
    lines += ['## Files', ''] + [f'- {k}: `{v}`' for k, v in files.items()] + ['']
    if 'timeline' in files:
        lines += [f'![timeline]({Path(files["timeline"]).name})', '']
    return '\n'.join(lines)


def plot_timeline(path: Path, frames: list, spec, evaluated: list[str], labels: Labels | None,
                  rescored: dict | None, report: dict) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from ..policy import PromptRule

    t = np.array([_stamp_s(a) for a in frames])
    rules = list(spec.rules)
    fig, axes = plt.subplots(len(rules) + 1, 1, figsize=(14, 2.8 * len(rules) + 2.0), sharex=True, squeeze=False,
                             gridspec_kw={'height_ratios': [3] * len(rules) + [1.2]})
    axes = axes[:, 0]
    for ax, rule in zip(axes, rules):
        if labels is not None:
            for i, s in enumerate(labels.spans):
                ax.axvspan(s.start, s.end, color='tab:green', alpha=0.12, label='labelled span' if i == 0 else None)
            for i, s in enumerate(labels.ambiguous):
                ax.axvspan(s.start, s.end, color='0.6', alpha=0.25, hatch='//', label='ambiguous' if i == 0 else None)
        if rescored:
            score = np.array([rescored[int(a.frame_sequence)].scores[rule.name]
                              if int(a.frame_sequence) in rescored else np.nan for a in frames], dtype=float)
            ax.plot(t, score, color='black', lw=1.3, label=f'{rule.name} score (every frame)')
        mine = np.array([a.action == rule.name for a in frames])
        if mine.any():
            ax.plot(t[mine], [a.score for a, m in zip(frames, mine) if m], 'o', ms=3.5, color='tab:red',
                    label=f'{rule.name} decided (Action.score)')
        prompt = isinstance(rule, PromptRule)
        enter = rule.enter if prompt else rule.below_similarity
        exit_ = rule.exit if prompt else rule.exit_similarity
        ax.axhline(enter, color='tab:red', lw=1.0, ls='--', label=f'enter {enter:g}')
        if exit_ != enter:
            ax.axhline(exit_, color='tab:red', lw=1.0, ls=':', label=f'exit {exit_:g}')
        ev = report['events'].get(rule.name) or {}
        for i, fa in enumerate(ev.get('false_alarms') or []):
            ax.axvline(fa, color='tab:orange', lw=1.5, label='false alarm' if i == 0 else None)
        ax.set_ylabel(f'{rule.score} score' if prompt else f'similarity {rule.lookback_s:g} s ago', fontsize=8)
        title = rule.name + (f' (region {rule.region})' if prompt and rule.region else '')
        if 'precision' in ev:
            title += f' — precision {_fmt(ev["precision"], 2)}, recall {_fmt(ev["recall"], 2)}'
            if ev['lead_time_s']:
                title += f', lead {ev["lead_time_s"]["mean"]:+.2f} s'
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    # Bottom strip: the action decided on each frame.
    strip = axes[-1]
    names = list(dict.fromkeys([spec.default_action.name] + [r.name for r in rules]
                               + sorted({a.action for a in frames})))
    colours = plt.get_cmap('tab10')
    for i, name in enumerate(names):
        sel = np.array([a.action == name for a in frames])
        if sel.any():
            strip.plot(t[sel], np.full(sel.sum(), i), '|', ms=12, mew=2, color=colours(i % 10), label=name)
    for name in evaluated:
        for onset in (report['events'].get(name) or {}).get('onsets') or \
                (report['events'].get(name) or {}).get('onsets_s') or []:
            strip.axvline(onset, color='tab:red', lw=0.8, ls='--')
    strip.set_yticks(range(len(names)), names, fontsize=8)
    strip.set_ylim(-0.7, len(names) - 0.3)
    strip.set_title('decided action per frame (dashed: onsets of the evaluated action)', fontsize=9)
    strip.set_xlabel('header stamp (media time) [s]')
    strip.grid(alpha=0.3, axis='x')
    if len(t):
        pad = max(0.5, 0.01 * (t[-1] - t[0]))
        strip.set_xlim(t[0] - pad, t[-1] + pad)
    fig.suptitle(f'{Path(report["bag"]).name}: replay through the pipeline ({report["mode"]}, lock-step)',
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

