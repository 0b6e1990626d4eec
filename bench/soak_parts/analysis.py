"""Analysis: percentiles, drop counters from /diagnostics, the soak and overload summaries and their pass/fail
targets."""
from __future__ import annotations

RSS_GROWTH_MAX = 0.05
P99_RATIO_MAX = 1.20


# -- statistics ----------------------------------------------------------------------------------------------
def percentile(values, q: float) -> float:
    """Linear-interpolated percentile (numpy's default); NaN for no values."""
    xs = sorted(values)
    if not xs:
        return float('nan')
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def drops_of(diag: dict) -> dict:
    camera, embedder = diag.get('camera', {}), diag.get('embedder', {})
    memory, policy = diag.get('memory', {}), diag.get('policy', {})

    def n(d, k):
        v = d.get(k, 0)
        return v if isinstance(v, (int, float)) else 0
    out = {'camera_dropped': n(camera, 'dropped'), 'embedder_dropped': n(embedder, 'dropped'),
           'embedder_lost': n(embedder, 'lost'), 'memory_rejected': n(memory, 'rejected'),
           'policy_rejected': n(policy, 'rejected')}
    out['total'] = sum(out.values())
    out['camera_published'] = n(camera, 'published')
    out['camera_captured'] = n(camera, 'captured')
    out['embedder_embedded'] = n(embedder, 'embedded')
    out['policy_decided'] = n(policy, 'decided')
    out['failsafes'] = n(policy, 'failsafes')
    return out



def latency_stats(actions, start: float, end: float) -> dict:
    xs = [ms for t, ms, failsafe in actions if start <= t <= end and not failsafe]
    return {'n': len(xs), 'p50_ms': percentile(xs, 50), 'p99_ms': percentile(xs, 99)}


def summarise_soak(record: dict, window_s: float) -> dict:
    samples = record['samples']
    t0, t_end = record['t0'], record['t_end']
    duration = t_end - t0
    steady = next((s for s in samples if s['t_s'] >= window_s - 1e-6), samples[-1])
    last = samples[-1]
    first = latency_stats(record['actions'], t0, t0 + window_s)
    lastw = latency_stats(record['actions'], t_end - window_s, t_end)
    total = latency_stats(record['actions'], t0, t_end)
    decided = [a for a in record['actions'] if not a[2]]
    drops = drops_of(record['diagnostics'])
    return {
        'window_s': round(window_s, 2), 'duration_s': round(duration, 2),
        'rss_mb_first_sample': round(samples[0]['rss_mb'], 2),
        'rss_mb_start': round(steady['rss_mb'], 2), 'rss_mb_end': round(last['rss_mb'], 2),
        'rss_mb_max': round(max(s['rss_mb'] for s in samples), 2),
        'fds_start': steady['fds'], 'fds_end': last['fds'],
        'fds_min': min(s['fds'] for s in samples if s['t_s'] >= steady['t_s']),
        'fds_max': max(s['fds'] for s in samples if s['t_s'] >= steady['t_s']),
        'shm_start': steady['shm'], 'shm_end': last['shm'], 'rings_start': steady['rings'],
        'rings_end': last['rings'], 'threads_start': steady['threads'], 'threads_end': last['threads'],
        'processes': last['processes'],
        'p50_ms_first_min': first['p50_ms'], 'p99_ms_first_min': first['p99_ms'], 'n_first_min': first['n'],
        'p50_ms_last_min': lastw['p50_ms'], 'p99_ms_last_min': lastw['p99_ms'], 'n_last_min': lastw['n'],
        'p50_ms': total['p50_ms'], 'p99_ms': total['p99_ms'],
        'actions': len(record['actions']), 'failsafes': sum(1 for a in record['actions'] if a[2]),
        'decisions_per_s': len(decided) / duration if duration > 0 else 0.0,
        'dropped': drops['total'], 'drops': drops,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else float('nan')


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and x == x and x not in (float('inf'), float('-inf'))


def soak_targets(soak: dict, s: dict, rss_growth: float, p99_ratio: float) -> dict:
    """The soak's pass/fail targets: soak is run_phase's record, s its summarise_soak."""
    return {
        'no_crash': not soak['crashed'],
        'rss_growth_lt_5pct': _finite(rss_growth) and rss_growth < RSS_GROWTH_MAX,
        'fds_flat': s['fds_end'] == s['fds_start'],
        'shm_flat': s['shm_end'] == s['shm_start'] and s['rings_end'] == s['rings_start'],
        'p99_last_within_20pct_of_first': _finite(p99_ratio) and p99_ratio <= P99_RATIO_MAX,
        'no_shm_leftovers': not soak['shm_leftovers'],
        'clean_stop': soak['clean_stop'] and soak['exit_code'] == 0,
    }


def _summarise_overload(rec: dict, soak: dict, overload_s: float, p99_factor: float) -> dict:
    started = rec['started'] and bool(rec['samples']) and 't0' in rec
    lat = latency_stats(rec.get('actions', []), rec.get('t0', 0), rec.get('t_end', 0)) if started else \
        {'n': 0, 'p50_ms': float('nan'), 'p99_ms': float('nan')}
    duration = (rec['t_end'] - rec['t0']) if started else 0.0
    decided = [a for a in rec.get('actions', []) if not a[2]]
    drops = drops_of(rec.get('diagnostics', {}))
    rate = len(decided) / duration if duration > 0 else float('nan')
    bound = p99_factor * soak['p99_ms'] if _finite(soak['p99_ms']) else float('nan')
    o = {'input_fps': rec['input_fps'], 'rate_hz': rec['rate_hz'], 'duration_s': round(duration, 2),
         'offered_over_sustainable': _ratio(rec['rate_hz'], soak['decisions_per_s']),
         'actions': len(rec.get('actions', [])), 'decisions_per_s': rate, 'p50_ms': lat['p50_ms'],
         'p99_ms': lat['p99_ms'], 'p99_bound_ms': bound, 'dropped': drops['total'], 'drops': drops,
         'exit_code': rec['exit_code'], 'shm_leftovers': rec['shm_leftovers'], 'samples': rec['samples'],
         'rss_mb_end': rec['samples'][-1]['rss_mb'] if rec['samples'] else None,
         'fds_end': rec['samples'][-1]['fds'] if rec['samples'] else None}
    o['targets'] = {
        'no_crash': started and not rec['crashed'],
        'drops_counted': drops['total'] > 0,
        'latency_bounded': _finite(lat['p99_ms']) and _finite(bound) and lat['p99_ms'] <= bound,
        'no_shm_leftovers': not rec['shm_leftovers'],
        'clean_stop': rec['clean_stop'] and rec['exit_code'] == 0,
    }
    return o
