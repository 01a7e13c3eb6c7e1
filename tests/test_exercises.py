"""The exercises' properties (notebooks/exercises/*.py), proven against the library or graded on a student's file.

    pytest tests/test_exercises.py                # the reference (notebooks/exercises/reference.py, on lora/)
    pytest tests/test_exercises.py --impl=mine    # the student's copies in notebooks/exercises/mine/

One class per exercise, one test per property. Every expected value is a property derived in the test
(an identity, a bound, a formula evaluated by hand, bytes counted from storage), never a stored answer.
In --impl=mine mode a function that still raises NotImplementedError skips its tests as "not
implemented yet", and a failure message says which property broke and what to check.
"""

import math

import pytest
import torch

from lora.inject import apply_lora
from lora.params import count_parameters
from lora.quant.nf4 import nbytes, quantize_nf4
from lora.targets import resolve_targets
from minigpt.model import GPT, GPTConfig

D_IN, D_OUT, R, ALPHA = 12, 10, 4, 8.0
f64 = dict(dtype=torch.float64)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def gap(a, b):
    return (torch.as_tensor(a, **f64) - torch.as_tensor(b, **f64)).abs().max().item()


def diagnose(got, mistakes):
    """': <hint>' for the first known mistake whose result `got` reproduces, else ''."""
    for hint, wrong in mistakes.items():
        if got.shape == wrong.shape and gap(got, wrong) < 1e-9:
            return f": {hint}"
    return ""


def lora_tensors(d_in=D_IN, d_out=D_OUT, r=R):
    """W, b, A, B in float64 with B nonzero: at B = 0 every identity about ΔW would hold trivially."""
    return (torch.randn(d_out, d_in, **f64), torch.randn(d_out, **f64), torch.randn(r, d_in, **f64),
            torch.randn(d_out, r, **f64))


class TestLoraLayer:
    EXERCISE = "lora_layer"

    def test_delta_weight_is_scaled_product_of_rank_r(self, ex):
        W, b, A, B = lora_tensors()
        dw = ex.delta_weight(A, B, ALPHA, R)
        assert tuple(dw.shape) == (D_OUT, D_IN), f"ΔW has shape {tuple(dw.shape)}, W's is {(D_OUT, D_IN)}: ΔW = B·A"
        assert torch.linalg.matrix_rank(dw) == R, "ΔW = B·A must have rank r"
        want = (ALPHA / R) * B @ A
        assert gap(dw, want) < 1e-12, (f"ΔW is off by {gap(dw, want):.1e}" + diagnose(dw, {
            "did you scale by α/r?": B @ A, "the factor is α/r, not r/α": (R / ALPHA) * B @ A}))

    def test_forward_at_B_zero_is_the_base(self, ex):
        W, b, A, _ = lora_tensors()
        x = torch.randn(3, 5, D_IN, **f64)
        out = ex.lora_forward(x, W, b, A, torch.zeros(D_OUT, R, **f64), ALPHA, R)
        assert tuple(out.shape) == (3, 5, D_OUT), f"output shape {tuple(out.shape)}: (..., d_in) -> (..., d_out)"
        assert gap(out, x @ W.T + b) == 0, "with B = 0 the output must be exactly the base's x Wᵀ + b"

    def test_forward_adds_the_scaled_low_rank_path(self, ex):
        W, b, A, B = lora_tensors()
        x = torch.randn(3, 5, D_IN, **f64)
        out = ex.lora_forward(x, W, b, A, B, ALPHA, R)
        base = x @ W.T + b
        want = base + (ALPHA / R) * (x @ A.T) @ B.T
        assert gap(out, want) < 1e-12, (f"forward is off by {gap(out, want):.1e}" + diagnose(out, {
            "did you scale the low-rank path by α/r?": base + (x @ A.T) @ B.T,
            "the factor is α/r, not r/α": base + (R / ALPHA) * (x @ A.T) @ B.T,
            "did you forget the bias b?": want - b}))
        assert gap(ex.lora_forward(x, W, None, A, B, ALPHA, R), want - b) < 1e-12, "b=None means no bias"

    def test_merge_preserves_output(self, ex):
        W, b, A, B = lora_tensors()
        W_before = W.clone()
        x = torch.randn(7, D_IN, **f64)
        merged = ex.merge(W, A, B, ALPHA, R)
        assert torch.equal(W, W_before), "merge modified W in place; return a new tensor W + ΔW"
        d = gap(x @ merged.T + b, ex.lora_forward(x, W, b, A, B, ALPHA, R))
        assert d < 1e-10, f"merge changed the output by {d:.1e}" + diagnose(merged, {
            "did you scale ΔW by α/r?": W + B @ A, "the factor is α/r, not r/α": W + (R / ALPHA) * B @ A,
            "merge adds ΔW to W": W - (ALPHA / R) * B @ A})

    def test_unmerge_undoes_merge(self, ex):
        W, _, A, B = lora_tensors()
        back = ex.unmerge(W + (ALPHA / R) * B @ A, A, B, ALPHA, R)  # a merge done by hand
        assert gap(back, W) < 1e-12, f"unmerge(W + ΔW) differs from W by {gap(back, W):.1e}: subtract ΔW = (α/r)·B·A"


class TestZeroInit:
    EXERCISE = "zero_init"

    def test_init_shapes_follow_the_paper(self, ex):
        A, B = ex.init_lora(D_IN, D_OUT, R)
        assert (tuple(A.shape), tuple(B.shape)) == ((R, D_IN), (D_OUT, R)), "A is (r, d_in), B is (d_out, r)"

    def test_init_B_is_zero_and_A_is_kaiming_uniform(self, ex):
        d_in = 256
        A, B = ex.init_lora(d_in, 64, 64)
        assert torch.count_nonzero(B) == 0, "B must start at zero, so that ΔW = B·A = 0 at step 0"
        bound = 1 / math.sqrt(d_in)
        assert A.abs().max() <= bound * (1 + 1e-6), f"max |A| = {A.abs().max():.4f} > 1/√d_in = {bound:.4f}"
        # U(-c, c) has standard deviation c/√3; 16,384 draws pin it to about 1%
        assert abs(A.std().item() / (bound / math.sqrt(3)) - 1) < 0.05, "A should be uniform on [-1/√d_in, 1/√d_in]"

    def test_grads_match_autograd(self, ex):
        _, _, A, B = lora_tensors()
        x, g = torch.randn(2, 3, D_IN, **f64), torch.randn(2, 3, D_OUT, **f64)
        A_, B_ = A.clone().requires_grad_(), B.clone().requires_grad_()
        ((ALPHA / R) * (x @ A_.T) @ B_.T).backward(g)  # h = s·(x Aᵀ) Bᵀ, then pull g back through it
        grad_A, grad_B = ex.lora_grads(x, A, B, g, ALPHA, R)
        assert gap(grad_B, B_.grad) < 1e-10, f"∂L/∂B is off by {gap(grad_B, B_.grad):.1e}: s · gᵀ (x Aᵀ), summed over positions"
        assert gap(grad_A, A_.grad) < 1e-10, f"∂L/∂A is off by {gap(grad_A, A_.grad):.1e}: s · (g B)ᵀ x, summed over positions"

    def test_at_init_grad_A_is_zero_and_grad_B_is_not(self, ex):
        A, B = ex.init_lora(D_IN, D_OUT, R)
        x, g = torch.randn(6, D_IN), torch.randn(6, D_OUT)
        grad_A, grad_B = ex.lora_grads(x, A, B, g, ALPHA, R)
        assert torch.count_nonzero(grad_A) == 0, "∂L/∂A = s·Bᵀ g xᵀ must vanish while B = 0"
        assert grad_B.abs().max() > 0, "∂L/∂B = s·gᵀ (x Aᵀ) must be nonzero at init: A is random"

    def test_both_zero_means_nothing_moves(self, ex):
        x, g = torch.randn(6, D_IN, **f64), torch.randn(6, D_OUT, **f64)
        grad_A, grad_B = ex.lora_grads(x, torch.zeros(R, D_IN, **f64), torch.zeros(D_OUT, R, **f64), g, ALPHA, R)
        assert torch.count_nonzero(grad_A) == 0 and torch.count_nonzero(grad_B) == 0, \
            "with A = B = 0 both gradients must be zero: that is why A starts random"


class TestParams:
    EXERCISE = "params"

    @pytest.mark.parametrize("d_in, d_out, r", [(12, 10, 4), (768, 2304, 8), (3072, 768, 1)])
    def test_count_equals_numel_of_A_and_B(self, ex, d_in, d_out, r):
        with torch.device("meta"):  # shapes without storage
            A, B = torch.empty(r, d_in), torch.empty(d_out, r)
        n = ex.lora_param_count(d_in, d_out, r)
        assert n == A.numel() + B.numel(), (f"{n} for d_in={d_in}, d_out={d_out}, r={r}; A (r, d_in) and "
                                            f"B (d_out, r) hold {A.numel() + B.numel()}")

    def test_count_is_linear_in_rank_and_symmetric(self, ex):
        assert ex.lora_param_count(100, 30, 8) == 2 * ex.lora_param_count(100, 30, 4), "r·(d_in + d_out) is linear in r"
        assert ex.lora_param_count(100, 30, 4) == ex.lora_param_count(30, 100, 4), "swapping d_in and d_out keeps the count"

    def test_model_count_matches_count_parameters(self, ex):
        with torch.device("meta"):
            model = GPT(GPTConfig.from_preset("test"))
        shapes = [(m.in_features, m.out_features) for _, m in resolve_targets(model, "all-linear")]
        apply_lora(model, rank=R, alpha=ALPHA, targets="all-linear")
        trainable, _ = count_parameters(model)
        n = ex.lora_model_param_count(shapes, R)
        assert n == trainable, f"{n} for {len(shapes)} layers; the adapted model trains {trainable}"


def nf4_offset():
    """The probability of the outermost level, as the skeleton's docstring defines it."""
    return round(((1 - 1 / 30) + (1 - 1 / 32)) / 2, 7)


def block_max(w, blocksize):
    """(any shape, n values) -> (ceil(n / bs),) max |w| of each block, computed with a loop a reader can check."""
    flat = w.reshape(-1).abs()
    return torch.stack([flat[i : i + blocksize].max() for i in range(0, flat.numel(), blocksize)])


class TestNF4:
    EXERCISE = "nf4"

    def test_codebook_has_16_sorted_levels_with_minus1_0_plus1(self, ex):
        levels = torch.as_tensor(ex.nf4_codebook()).double()
        assert tuple(levels.shape) == (16,), f"the codebook has shape {tuple(levels.shape)}; 4 bits give 16 levels"
        assert torch.all(levels[1:] > levels[:-1]), "levels must be sorted ascending and distinct"
        assert levels[0] == -1 and levels[-1] == 1, "divide by the largest level: the ends must be exactly -1 and +1"
        assert (levels == 0).sum() == 1, "0 must be a level, exactly: the halves are built separately and joined at 0"
        assert ((levels < 0).sum(), (levels > 0).sum()) == (7, 8), "7 negative and 8 positive levels"

    def test_codebook_halves_are_normal_quantiles_at_equal_probability_steps(self, ex):
        levels = torch.as_tensor(ex.nf4_codebook()).double()
        normal = torch.distributions.Normal(torch.tensor(0.0, **f64), torch.tensor(1.0, **f64))
        # both halves were divided by Φ⁻¹(offset), so Φ(|level|·Φ⁻¹(offset)) is the probability each was taken at
        p = normal.cdf(levels.abs() * normal.icdf(torch.tensor(nf4_offset(), **f64)))
        for half, count in ((levels > 0, 8), (levels < 0, 7)):
            steps = p[half].sort().values.diff(prepend=torch.tensor([0.5], **f64))
            want = (nf4_offset() - 0.5) / count
            assert gap(steps, torch.full_like(steps, want)) < 1e-6, (
                f"the {count} {'positive' if count == 8 else 'negative'} levels are not quantiles of N(0, 1) at "
                f"probabilities 0.5 + k·{want:.5f}: use Φ⁻¹ of linspace(offset, 0.5, {count + 1})[:-1]")

    def test_pack_unpack_identity_over_all_bytes(self, ex):
        every_byte = torch.arange(256).to(torch.uint8)
        every_pair = torch.cartesian_prod(torch.arange(16), torch.arange(16)).reshape(-1)  # (512,) all code pairs
        packed = ex.pack_nibbles(every_pair)
        assert packed.dtype == torch.uint8 and packed.numel() == 256, "two codes per uint8 byte"
        assert torch.equal(ex.unpack_nibbles(packed).long(), every_pair), "unpack(pack(codes)) must give the codes back"
        assert torch.equal(ex.pack_nibbles(ex.unpack_nibbles(every_byte)), every_byte), "pack(unpack(b)) must be b"
        assert ex.pack_nibbles(torch.tensor([1, 0])).item() == 16, "the first code goes in the HIGH nibble: [a, b] -> 16a + b"

    @pytest.mark.parametrize("shape, blocksize", [((10, 10), 64), ((7, 9), 64), ((3, 4, 32), 32)])
    def test_quantize_stores_codes_and_block_absmax(self, ex, shape, blocksize):
        w = torch.randn(shape)
        packed, absmax = ex.quantize_blockwise(w, blocksize)
        n = w.numel()
        assert packed.dtype == torch.uint8 and packed.numel() == (n + 1) // 2, \
            f"{n} values need {(n + 1) // 2} uint8 bytes, got {packed.numel()} {packed.dtype}"
        assert gap(absmax, block_max(w, blocksize)) == 0, "absmax must be max |w| of each block (the last may be partial)"

    @pytest.mark.parametrize("shape, blocksize", [((33, 64), 64), ((7, 9), 64), ((5, 40), 32)])
    def test_roundtrip_picks_the_nearest_level(self, ex, shape, blocksize):
        w = torch.randn(shape)
        packed, absmax = ex.quantize_blockwise(w, blocksize)
        w_hat = ex.dequantize_blockwise(packed, absmax, blocksize, w.shape)
        assert tuple(w_hat.shape) == shape, f"dequantised shape {tuple(w_hat.shape)}; the weight's is {shape}"
        a = absmax.double().repeat_interleave(blocksize)[: w.numel()].reshape(shape)  # each value's block absmax
        levels = torch.as_tensor(ex.nf4_codebook()).double()
        chosen = w_hat.double() / a
        assert (chosen[..., None] - levels).abs().min(-1).values.max() < 1e-6, "every ŵ / absmax must be a level"
        nearest = (w.double()[..., None] / a[..., None] - levels).abs().min(-1).values
        worse = ((w.double() / a - chosen).abs() - nearest).max().item()
        assert worse < 1e-6, f"a value was rounded to a level {worse:.3f} farther than the nearest: use argmin |w/absmax − level|"
        half_gap = (levels.diff().max() / 2).item()
        err = ((w_hat.double() - w.double()).abs() / a).max().item()
        assert err <= half_gap + 1e-6, f"error {err:.3f}·absmax exceeds half the widest level gap ({half_gap:.3f}·absmax)"

    def test_block_extremes_and_zero_blocks_are_exact(self, ex):
        w = torch.randn(4, 64)
        w[2] = 0.0  # an all-zero block: absmax 0 must not turn into 0/0
        packed, absmax = ex.quantize_blockwise(w, 64)
        w_hat = ex.dequantize_blockwise(packed, absmax, 64, w.shape)
        assert torch.isfinite(w_hat).all() and torch.equal(w_hat[2], torch.zeros(64)), "an all-zero block must come back as zeros"
        i = w.abs().argmax(dim=1)
        extremes = w.gather(1, i[:, None])
        assert torch.equal(w_hat.gather(1, i[:, None]), extremes), "the value equal to its block's absmax maps to ±1: exact"


class TestDoubleQuant:
    EXERCISE = "double_quant"

    @pytest.mark.parametrize("blocksize", [32, 64, 128, 256])
    def test_bits_per_parameter_match_stored_bytes(self, ex, blocksize):
        n = blocksize * 256 * 4  # whole blocks at both levels, so the formula has no padding to account for
        w = torch.randn(n)
        plain = 8 * nbytes(quantize_nf4(w, blocksize=blocksize)) / n
        got = ex.bits_per_parameter(blocksize)
        assert abs(got - plain) < 1e-12, f"{got} bits at blocksize {blocksize}; lora.quant.nf4 stores {plain}: 4 per code + 32 per block"
        dq = 8 * nbytes(quantize_nf4(w, blocksize=blocksize, double_quant=True)) / n - 32 / n  # less the one mean
        got = ex.bits_per_parameter(blocksize, 256)
        assert abs(got - dq) < 1e-12, (f"{got} bits with double quantisation; lora.quant.nf4 stores {dq}: 4 per code, 8 per "
                                       "block, 32 per 256 blocks")

    def test_double_quant_saves_bits(self, ex):
        assert ex.bits_per_parameter(64, 256) < ex.bits_per_parameter(64), "8-bit constants must cost less than float32 ones"
        assert ex.bits_per_parameter(128) < ex.bits_per_parameter(64), "larger blocks: fewer constants per weight"

    def test_double_quantize_shapes_range_and_mean(self, ex):
        absmax = block_max(torch.randn(64 * 300), 64)  # 300 constants: one block of 256 and one of 44
        q, scale, mean = ex.double_quantize(absmax, 256)
        assert q.dtype == torch.int8 and tuple(q.shape) == (300,), f"q: (300,) int8, got {tuple(q.shape)} {q.dtype}"
        assert tuple(scale.shape) == (2,) and tuple(mean.shape) == (1,), "one scale per block of 256, one mean"
        assert abs(mean.item() - absmax.mean().item()) < 1e-6, "mean must be the mean of all constants"
        assert q.abs().max() <= 127 and q[:256].abs().max() == 127 and q[256:].abs().max() == 127, \
            "each block's largest |a − mean| must map to ±127"

    def test_double_dequantize_error_within_half_a_step(self, ex):
        absmax = block_max(torch.randn(64 * 300), 64)
        q, scale, mean = ex.double_quantize(absmax, 256)
        err = (ex.double_dequantize(q, scale, mean, 256) - absmax).abs()
        bound = scale.repeat_interleave(256)[:300] / 254  # half of an int8 step s/127
        assert torch.all(err <= bound * (1 + 1e-5) + 1e-7), f"error {err.max():.2e}: round to the nearest of 255 steps"


def adapters():
    """Three adapters of ranks 2, 3 and 1 on a 12 -> 10 layer, their weights and scalings α/r."""
    ranks, alphas = (2, 3, 1), (4.0, 3.0, 8.0)
    As = [torch.randn(r, D_IN, **f64) for r in ranks]
    Bs = [torch.randn(D_OUT, r, **f64) for r in ranks]
    return As, Bs, [0.5, -1.0, 2.0], [a / r for a, r in zip(alphas, ranks, strict=True)]


class TestAdapterArithmetic:
    EXERCISE = "adapter_arithmetic"

    def test_cat_reproduces_the_weighted_sum(self, ex):
        As, Bs, weights, scalings = adapters()
        A, B = ex.combine_cat(As, Bs, weights, scalings)
        assert (tuple(A.shape), tuple(B.shape)) == ((6, D_IN), (D_OUT, 6)), "cat stacks: A (Σ r_i, d_in), B (d_out, Σ r_i)"
        terms = [B_i @ A_i for A_i, B_i in zip(As, Bs, strict=True)]
        want = sum(w * s * t for w, s, t in zip(weights, scalings, terms, strict=True))
        assert gap(B @ A, want) < 1e-12, f"B·A is off by {gap(B @ A, want):.1e}" + diagnose(B @ A, {
            "did you multiply each term by its weight?": sum(s * t for s, t in zip(scalings, terms, strict=True)),
            "did you multiply each term by its scaling α_i/r_i?": sum(w * t for w, t in zip(weights, terms, strict=True))})

    def test_svd_error_is_the_discarded_spectrum(self, ex):
        delta = torch.randn(D_OUT, D_IN, **f64)
        s = torch.linalg.svdvals(delta)
        for rank in range(1, D_OUT + 1):
            A, B = ex.combine_svd(delta, rank)
            assert (tuple(A.shape), tuple(B.shape)) == ((rank, D_IN), (D_OUT, rank)), "A (rank, d_in), B (d_out, rank)"
            err = torch.linalg.matrix_norm(delta - B @ A).item()
            want = s[rank:].square().sum().sqrt().item()
            assert abs(err - want) < 1e-9, (f"rank {rank}: error {err:.4f}, Eckart–Young's best is √(Σ_(i>r) σ_i²) = "
                                             f"{want:.4f}: keep the top singular directions, B = U_r S_r, A = V_rᵀ")

    def test_svd_beats_other_rank_r_factorisations(self, ex):
        As, Bs, _, _ = adapters()
        A_cat, B_cat = torch.cat(As), torch.cat(Bs, dim=1)  # (6, d_in), (d_out, 6)
        delta = B_cat @ A_cat  # rank 6
        A, B = ex.combine_svd(delta, 3)
        best = torch.linalg.matrix_norm(delta - B @ A)
        rivals = {"the first 3 of the stacked directions": B_cat[:, :3] @ A_cat[:3],
                  "a random rank-3 projection": delta @ torch.linalg.qr(torch.randn(D_IN, 3, **f64)).Q
                  @ torch.linalg.qr(torch.randn(D_IN, 3, **f64)).Q.T}
        for name, rival in rivals.items():
            assert best <= torch.linalg.matrix_norm(delta - rival) + 1e-12, f"{name} approximates ΔW better than combine_svd"
        A6, B6 = ex.combine_svd(delta, 6)
        assert gap(B6 @ A6, delta) < 1e-10, "at rank ≥ rank(ΔW) the factorisation must be exact"
