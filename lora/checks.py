"""Checks of user-given settings, written once: each raises a ValueError naming the value and what is allowed.

Booleans are refused where numbers are expected (`True` is an int in Python, and rank=True would
silently mean rank 1), and non-finite floats are refused everywhere.
"""

import math
import numbers


def check_int(name, value, least=1):
    """`value` must be an integer >= least (not a bool); returns it as int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
        what = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise ValueError(f"{name}={value!r}: must be {what}")
    return int(value)


def check_float(name, value, low=0.0, high=math.inf, low_open=True, high_open=True):
    """`value` must be a finite real number in the interval (low, high) (ends per *_open); returns it as float."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r}: must be a finite number in {interval}")
    return float(value)


def check_bool(name, value):
    """`value` must be True or False (not 1, "false" or None)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: must be True or False")
    return value


def check_choice(name, value, choices):
    """`value` must be one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {list(choices)}")
    return value
