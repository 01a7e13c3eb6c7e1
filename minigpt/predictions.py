"""Predict, then measure: the notebooks' prediction cells compare a reader's guess with what was measured.

A notebook asks for a prediction in a variable before a key experiment (None: not made yet), runs the
experiment, and prints check_prediction(...): whether the guess was right, by how much it was off,
and why the measured value is what it is, in the grader's style ("... is off by 0.45: ..."). Nothing
here raises on a wrong guess: a prediction is for learning, the notebook's asserts check the
measurement. In fast mode (NB_FAST=1, CI) a notebook fills an unset prediction with the reference
answer of REFERENCE, so it runs top to bottom unattended.
"""

import math
import numbers

# the reference answers of the notebooks' prediction cells, by name
REFERENCE = {
    "grad_A_zero_at_step_0": True,          # nb03: ∂L/∂A = s Bᵀ g xᵀ and B = 0
    "double_quant_bytes_saved": (32 / 64 - 8 / 64 - 32 / (64 * 256)) / 8,  # nb05: 0.0466 bytes per parameter
    "loss_gap_r1_minus_r8": 0.17,           # nb08: 2.196 at r = 1 against 2.026 at r = 8 (its full-mode run)
}


def reference(name):
    """The reference answer of prediction `name` (REFERENCE); ValueError naming the known ones."""
    if name not in REFERENCE:
        raise ValueError(f"no reference answer named {name!r}; there are {sorted(REFERENCE)}")
    return REFERENCE[name]


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_prediction(name, predicted, measured, tolerance=0.0, why=""):
    """One line comparing `predicted` with `measured`, and `why` the measurement is what it is.

    Args:
        name: what was predicted, in words ("∂L/∂A at step 0 is exactly zero").
        predicted: the reader's guess: a bool, a number or a string; None when no guess was made.
        measured: the measured value, of the same kind.
        tolerance: for numbers, the largest |predicted − measured| that still counts as right.
        why: the explanation, shown in every case.
    Returns:
        "right: ..." | "off: ..." | "no prediction yet: ...", ending with `why`.
    Raises:
        ValueError: a negative or NaN tolerance, or a prediction of another kind than the measurement
            (a number for a yes/no question), naming both.
    """
    if not (_is_number(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance={tolerance!r}: give a number >= 0")
    explain = f": {why}" if why else ""
    if predicted is None:
        return f"no prediction yet for '{name}': measured {_show(measured)}{explain}"
    if _is_number(predicted) != _is_number(measured) or (not _is_number(measured) and type(predicted) is not type(measured)):
        raise ValueError(f"prediction {predicted!r} for '{name}' is a {type(predicted).__name__}; the measurement "
                         f"{measured!r} is a {type(measured).__name__}: predict the same kind of value")
    if _is_number(measured):
        gap = abs(predicted - measured)
        if gap <= tolerance:
            return f"right: '{name}' measured {_show(measured)}, you predicted {_show(predicted)}{explain}"
        within = f" (more than the {_show(tolerance)} allowed)" if tolerance else ""
        return (f"off: '{name}' measured {_show(measured)}, you predicted {_show(predicted)}, off by "
                f"{_show(gap)}{within}{explain}")
    if predicted == measured:
        return f"right: '{name}' is {_show(measured)}{explain}"
    return f"off: '{name}' is {_show(measured)}, you predicted {_show(predicted)}{explain}"


def _show(value):
    """Numbers with 4 significant digits, the rest as repr."""
    if _is_number(value) and math.isfinite(value) and not float(value).is_integer():
        return f"{value:.4g}"
    return repr(value) if isinstance(value, str) else str(value)
