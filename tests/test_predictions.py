"""minigpt.predictions: the notebooks' predict-then-measure lines say right or off, by how much, and why."""

import pytest

from minigpt.predictions import REFERENCE, check_prediction, reference


def test_a_number_within_the_tolerance_is_right_and_beyond_it_is_off_by_the_gap():
    assert check_prediction("bytes saved", 0.05, 0.0466, tolerance=0.005, why="w").startswith("right: ")
    text = check_prediction("bytes saved", 0.5, 0.0466, tolerance=0.005, why="the scales shrink")
    assert text.startswith("off: ") and "off by 0.4534" in text and "more than the 0.005 allowed" in text
    assert text.endswith(": the scales shrink")


def test_a_yes_no_prediction_is_right_only_when_equal():
    assert check_prediction("∂L/∂A is zero", True, True).startswith("right: ")
    assert check_prediction("∂L/∂A is zero", False, True, why="B = 0").startswith("off: ")


def test_no_prediction_shows_the_measurement_and_why():
    text = check_prediction("gap", None, 0.123456, why="rank matters little")
    assert text == "no prediction yet for 'gap': measured 0.1235: rank matters little"


@pytest.mark.parametrize("predicted, measured", [(1, True), (True, 0.5), ("a", 1.0)])
def test_a_prediction_of_another_kind_is_refused(predicted, measured):
    with pytest.raises(ValueError, match="predict the same kind of value"):
        check_prediction("x", predicted, measured)


@pytest.mark.parametrize("tolerance", [-1, float("nan"), "0.1"])
def test_a_bad_tolerance_is_refused(tolerance):
    with pytest.raises(ValueError, match="tolerance="):
        check_prediction("x", 1.0, 1.0, tolerance=tolerance)


def test_reference_answers_are_the_ones_the_notebooks_explain():
    # double quantisation: 32-bit scales per 64 weights become 8-bit ones plus one 32-bit scale per 256 blocks
    assert reference("double_quant_bytes_saved") == pytest.approx((4.5 - (4 + 8 / 64 + 32 / 16384)) / 8)
    assert reference("grad_A_zero_at_step_0") is True
    assert set(REFERENCE) == {"grad_A_zero_at_step_0", "double_quant_bytes_saved", "loss_gap_r1_minus_r8"}
    with pytest.raises(ValueError, match="no reference answer named 'nope'"):
        reference("nope")
