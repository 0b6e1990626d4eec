"""Node health from counters: rates from deltas, levels from first principles."""
import math

from vidaction_ros.diagnostics import ERROR, OK, WARN, RateMeter, format_value, health


def test_rates_are_counter_deltas_per_second():
    meter = RateMeter()
    assert meter.rates({'published': 0}, now=10.0) == {}              # nothing to compare with yet
    assert meter.rates({'published': 20}, now=12.0) == {'published': 10.0}
    assert meter.rates({'published': 20, 'dropped': 3}, now=13.0) == {'published': 0.0, 'dropped': 3.0}


def test_healthy_node_is_ok_and_reports_every_number():
    level, message, values = health({'embedded': 100, 'dropped': 0}, {'embedded': 10.0, 'dropped': 0.0},
                                    {'p50_ms': 70.25, 'p99_ms': math.nan}, {'backend': 'cpu'},
                                    rate_key='embedded', expected_rate_hz=10.0)
    assert (level, message) == (OK, 'ok')
    assert dict(values) == {'backend': 'cpu', 'embedded': '100', 'dropped': '0', 'embedded_per_s': '10.000',
                            'dropped_per_s': '0.000', 'p50_ms': '70.250', 'p99_ms': 'nan'}


def test_rising_drops_and_a_low_rate_warn():
    level, message, _ = health({'embedded': 5, 'dropped': 9}, {'embedded': 4.0, 'dropped': 2.0},
                               rate_key='embedded', expected_rate_hz=10.0)
    assert level == WARN and 'embedded at 4.0/s' in message and 'dropped rising' in message


def test_error_wins():
    level, message, _ = health({'failsafes': 1}, {'failsafes': 1.0}, error='perception stale')
    assert (level, message) == (ERROR, 'perception stale')


def test_format_value():
    assert format_value(1.23456) == '1.235' and format_value('x') == 'x' and format_value(True) == 'True'
