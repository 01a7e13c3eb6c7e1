"""Exercise, the bug lab: write the property test that catches each planted bug (notebooks/exercises/bugs/).

Each bug in bugs/ is a small variant of a library function with one realistic mistake in it (its
docstring says where). For each, write a test of a property that the correct code has and the bug
breaks: an identity, a bound, an invariance, a comparison with a formula or with autograd, checked on
tiny seeded inputs. The grader calls each test twice, with `impl` holding

    impl.LoRALinear, impl.apply_lora, impl.merge_and_unload, impl.quantize_model,
    impl.nf4_codebook, impl.pack_nibbles, impl.dora_forward, impl.window_start

first as the library has them (the test must pass), then with that one bug planted (the test must
fail: an assertion, or any error). Call the function under test through `impl`; build everything
else (models, layers, inputs) with the library itself (lora, minigpt, torch). The random seed is 0
at the start of each call. Guard against vacuous passes: a merge test must first make B nonzero.

Copy this file to notebooks/exercises/mine/ and grade it (docs/exercises.md):

    mkdir -p notebooks/exercises/mine && cp notebooks/exercises/bug_lab.py notebooks/exercises/mine/
    pytest tests/test_bug_lab.py --impl=mine

To try one test by hand, from notebooks/exercises/: `import bugs, mine.bug_lab as lab` (or load your
file), then `lab.test_missing_scaling(bugs.library())` must pass and
`lab.test_missing_scaling(bugs.variant("missing_scaling"))` must raise.
"""

import torch  # noqa: F401  (you will need these)
import torch.nn as nn  # noqa: F401

import lora  # noqa: F401
from minigpt import GPT, GPTConfig  # noqa: F401


def test_missing_scaling(impl):
    """Catches bugs/missing_scaling.py: impl.LoRALinear's forward adds the update without the scaling α/r."""
    raise NotImplementedError


def test_random_B_init(impl):
    """Catches bugs/random_B_init.py: impl.LoRALinear initialises B like A, not at zero."""
    raise NotImplementedError


def test_dropout_after_A(impl):
    """Catches bugs/dropout_after_A.py: impl.LoRALinear drops entries of the r-wide A x, not input features of x
    (build it with dropout > 0, in training mode)."""
    raise NotImplementedError


def test_unfrozen_bias(impl):
    """Catches bugs/unfrozen_bias.py: impl.apply_lora leaves the model's biases trainable."""
    raise NotImplementedError


def test_tied_head_merge(impl):
    """Catches bugs/tied_head_merge.py: impl.merge_and_unload adds ΔW in place into a weight that the layer
    shares with another module (a LoRA on GPT's lm_head, which is tied to transformer.wte)."""
    raise NotImplementedError


def test_symmetric_codebook(impl):
    """Catches bugs/symmetric_codebook.py: impl.nf4_codebook returns 16 symmetric normal quantiles."""
    raise NotImplementedError


def test_nibble_order(impl):
    """Catches bugs/nibble_order.py: impl.pack_nibbles puts the first code of each pair in the low nibble."""
    raise NotImplementedError


def test_merge_into_w16(impl):
    """Catches bugs/merge_into_w16.py: after QLoRA (impl.quantize_model, then LoRA), impl.merge_and_unload adds
    ΔW to the original float weight instead of to the dequantised 4-bit one."""
    raise NotImplementedError


def test_norm_not_detached(impl):
    """Catches bugs/norm_not_detached.py: impl.dora_forward lets gradients flow through the norm ‖W0 + ΔW‖.
    (Its arguments: x, weight W0, bias, lora_A, lora_B, scaling, magnitude m.)"""
    raise NotImplementedError


def test_window_off_by_one(impl):
    """Catches bugs/window_off_by_one.py: impl.window_start(length, start, block_size, keep) slides the
    generation window one token too early (minigpt/kv_cache.py states the rule)."""
    raise NotImplementedError
