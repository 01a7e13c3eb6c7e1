"""LoRA's multiply-adds against nn.Linear's (minigpt.bench.inference.flop_ratios), by hand.

Per token, a d_in -> d_out layer: forward d_in·d_out; backward of a trained nn.Linear 2·d_in·d_out
(input and weight gradients); LoRA's frozen base only the input gradient, d_in·d_out, and its side path
r(d_in + d_out) in the forward pass and twice more in the backward pass.
"""

import pytest

from minigpt.bench.inference import flop_ratios


def test_flop_ratios_hand_values_for_the_tiny_models_c_attn():
    forward, train = flop_ratios(128, 384, 8)  # dense 49,152, side path 8·512 = 4,096
    assert forward == pytest.approx((49_152 + 4_096) / 49_152)
    assert train == pytest.approx((2 * 49_152 + 3 * 4_096) / (3 * 49_152)) == pytest.approx(0.75)


def test_without_a_side_path_lora_keeps_two_thirds_of_the_training_work():
    # rank → 0: only the weight gradient is saved, a third of forward + backward
    assert flop_ratios(4096, 4096, 0)[1] == pytest.approx(2 / 3)
    assert all(2 / 3 < flop_ratios(768, d_out, r)[1] < 1 for d_out in (768, 2304, 3072) for r in (1, 8, 64))
