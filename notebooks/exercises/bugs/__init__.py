"""The bug lab: realistic bugs planted in the library, one per module, for your property tests to catch.

Each module here is a small, importable variant of one or two library functions with one bug in
them. `library()` gives the functions under test as the library has them; `variant(bug)` gives the
same set with that bug's versions swapped in. Your test for a bug (notebooks/exercises/bug_lab.py)
receives one of them as `impl` and must pass on the library and fail on the bug:

    import bugs                                # from notebooks/exercises/ (the grader loads it by path)
    test_missing_scaling(bugs.library())       # must pass
    test_missing_scaling(bugs.variant("missing_scaling"))   # must fail

Each module's docstring says where its bug is and what it does wrong; finding a property of the
correct code that it breaks is the exercise. Grade with `pytest tests/test_bug_lab.py --impl=mine`.
"""

import importlib
import types

import lora
import minigpt.kv_cache

BUGS = ("missing_scaling", "random_B_init", "dropout_after_A", "unfrozen_bias", "tied_head_merge",
        "symmetric_codebook", "nibble_order", "merge_into_w16", "norm_not_detached", "window_off_by_one")
# the functions under test: every bug replaces one or two of them
FUNCTIONS = ("LoRALinear", "apply_lora", "merge_and_unload", "quantize_model", "nf4_codebook", "pack_nibbles",
             "dora_forward", "window_start")


def library():
    """The functions under test, from the library itself."""
    return types.SimpleNamespace(
        LoRALinear=lora.LoRALinear, apply_lora=lora.apply_lora, merge_and_unload=lora.merge_and_unload,
        quantize_model=lora.quantize_model, nf4_codebook=lora.nf4_codebook, pack_nibbles=lora.pack_nibbles,
        dora_forward=lora.dora_forward, window_start=minigpt.kv_cache.window_start)


def variant(bug):
    """The functions under test with `bug` planted (one of BUGS)."""
    if bug not in BUGS:
        raise ValueError(f"bug={bug!r}: the planted bugs are {list(BUGS)}")
    module = importlib.import_module(f"{__name__}.{bug}")
    planted = {name: getattr(module, name) for name in FUNCTIONS if hasattr(module, name)}
    return types.SimpleNamespace(**{**vars(library()), **planted})
