"""Checks of user-given settings, written once: each raises a ValueError naming the value and what is allowed.

Booleans are refused where numbers are expected (`True` is an int in Python, and rank=True would
silently mean rank 1), and non-finite floats are refused everywhere. A value of the wrong type is a
ValueError like any other bad value, so callers catch one exception type.
"""

import math
import numbers


def is_int(value):
    """True for an integer that is not a bool (a JSON `true` must not pass as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value):
    """True for a finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name, value, least=1):
    """`value` must be an integer >= least (not a bool); returns it as int."""
    if not is_int(value) or value < least:
        what = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise ValueError(f"{name}={value!r}: must be {what}")
    return int(value)


def check_float(name, value, low=0.0, high=math.inf, low_open=True, high_open=True):
    """`value` must be a finite real number in the interval (low, high) (ends per *_open); returns it as float."""
    ok = is_finite_number(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r}: must be a finite number in {interval}")
    return float(value)


def check_positive(name, value):
    """`value` must be a finite number > 0; returned as given, so an int stays an int (as a file wrote it)."""
    check_float(name, value)
    return value


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


def check_int_list(name, value, least=0):
    """An integer or a non-empty list/tuple of integers, each >= least; returned as a tuple."""
    items = (value,) if is_int(value) else value
    if not isinstance(items, (list, tuple)) or not items or not all(is_int(i) and i >= least for i in items):
        raise ValueError(f"{name}={value!r}: give an integer >= {least} or a non-empty list of them")
    return tuple(int(i) for i in items)


def check_numbers(name, values, count=None):
    """A list/tuple of finite numbers (of length `count` if given); returned as a list of floats."""
    if not isinstance(values, (list, tuple)) or (count is not None and len(values) != count):
        raise ValueError(f"{name}={values!r}: give a list of {count if count is not None else 'some'} numbers")
    for v in values:
        if not is_finite_number(v):
            raise ValueError(f"{name}={values!r}: {v!r} is not a finite number")
    return [float(v) for v in values]


def check_str(name, value):
    """`value` must be a non-empty str."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}={value!r}: must be a non-empty string")
    return value
