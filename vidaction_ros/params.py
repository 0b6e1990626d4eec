"""Parameters declared once with descriptors (description, ranges, read-only) and validated at startup.

A bad value fails the node at startup with a message naming the parameter, what was expected and what was
given — never a silent clamp or a crash deep in a callback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.parameter import Parameter


class ParameterError(ValueError):
    pass


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: Sequence[str] | None = None
    read_only: bool = True     # most settings need a restart (model, source, rings): say so
    allow_empty: bool = True


def _descriptor(spec: Param) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        descriptor.additional_constraints = 'one of: ' + ', '.join(spec.choices)
    if isinstance(spec.default, bool):
        return descriptor
    if isinstance(spec.default, int) and (spec.minimum is not None or spec.maximum is not None):
        descriptor.integer_range = [IntegerRange(
            from_value=int(spec.minimum if spec.minimum is not None else -2**62),
            to_value=int(spec.maximum if spec.maximum is not None else 2**62), step=0)]
    elif isinstance(spec.default, float) and (spec.minimum is not None or spec.maximum is not None):
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(spec.minimum if spec.minimum is not None else -1e300),
            to_value=float(spec.maximum if spec.maximum is not None else 1e300), step=0.0)]
    return descriptor


def check_value(spec: Param, value: Any) -> Any:
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        raise ParameterError(f"parameter '{spec.name}': expected {expected.__name__}, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise ParameterError(f"parameter '{spec.name}': must be >= {spec.minimum}, got {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        raise ParameterError(f"parameter '{spec.name}': must be <= {spec.maximum}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ParameterError(f"parameter '{spec.name}': must be one of {list(spec.choices)}, got {value!r}")
    if isinstance(value, str) and not spec.allow_empty and not value.strip():
        raise ParameterError(f"parameter '{spec.name}': must not be empty")
    return value


def _coerce_override(node, spec: Param) -> None:
    """An integer override of a float parameter becomes a float, before rclpy's static type check sees it.

    `-p rate_hz:=10`, `rate_hz: 10` in a params file and `--set memory.ttl_s=30` all arrive as INTEGER, and
    rclpy refuses them for a DOUBLE parameter ("expecting type 'DOUBLE'") although 10 means 10.0 beyond
    doubt; check_value already takes an int for a float, this makes the override path agree. Nothing else is
    coerced: 3.7 for an integer or 0 for a string stays a type error naming the parameter."""
    overrides = getattr(node, '_parameter_overrides', None)   # rclpy keeps them here since Foxy
    if not isinstance(spec.default, float) or not isinstance(overrides, dict) or spec.name not in overrides:
        return
    given = overrides[spec.name]
    if given.type_ == Parameter.Type.INTEGER:
        overrides[spec.name] = Parameter(spec.name, Parameter.Type.DOUBLE, float(given.value))


def unknown_overrides(node, declared: Sequence[str]) -> list[str]:
    """One message per parameter given to the node (params file, -p, parameter_overrides) that it does not
    declare, with the closest declared name. rclpy ignores such overrides silently, so a typo such as
    `rate_hzz:=5` would leave the default in force with no word said."""
    import difflib
    overrides = getattr(node, '_parameter_overrides', None) or {}
    messages = []
    for name in sorted(overrides):
        # qos_overrides.* are declared lazily by publishers/subscriptions; use_sim_time & co. by rclpy.
        if name.startswith('qos_overrides.') or node.has_parameter(name):
            continue
        close = difflib.get_close_matches(name, list(declared), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ''
        messages.append(f"unknown parameter '{name}' (not declared by this node): ignored{hint}")
    return messages


def declare(node, specs: Sequence[Param]) -> dict[str, Any]:
    """Declare every parameter on the node and return their validated values by name.

    An override naming no declared parameter is logged as a warning, not refused: a params file's `/**`
    section or a global `-p` legitimately reaches every node of a process, also those that do not take it."""
    values = {}
    for spec in specs:
        _coerce_override(node, spec)
        try:
            parameter = node.declare_parameter(spec.name, spec.default, _descriptor(spec))
        except (InvalidParameterTypeException, InvalidParameterValueException) as err:
            raise ParameterError(f"parameter '{spec.name}': {err}") from None
        value = parameter.value
        if parameter.type_ == Parameter.Type.NOT_SET:
            value = spec.default
        values[spec.name] = check_value(spec, value)
    for message in unknown_overrides(node, [spec.name for spec in specs]):
        node.get_logger().warning(message)
    return values
