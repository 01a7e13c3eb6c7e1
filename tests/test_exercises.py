"""The graded exercises' properties (notebooks/exercises/*.py), proven on the worked solutions or graded on a student's files.

    pytest tests/test_exercises.py                # the worked solutions (tests/exercise_solutions/)
    pytest tests/test_exercises.py --impl=mine    # the student's copies in notebooks/exercises/mine/

One class per exercise (its EXERCISE names the skeleton; `-k <exercise>` selects the class), one test
per property. Every expected value is a property derived in the test (an identity, a bound, a formula
evaluated by hand, autograd's gradient, bytes counted from storage), never a stored answer. A function
that still raises NotImplementedError marks its tests "todo", and a failure message says which
property broke and, for the common mistakes, which one it is.

Test names never contain another exercise's name: `-k nf4` must not pick a DoRA test (the check is
tests/test_grading_commands.py).
"""

import functools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lora
from minigpt import GPT, GPTConfig

D_IN, D_OUT, R, ALPHA = 12, 10, 4, 8.0
f64 = dict(dtype=torch.float64)


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
        assert gap(out, x @ W.T + b) < 1e-12, "with B = 0 the output must be the base's W x + b: ΔW = 0"

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
        for name, got, want, factor in (("∂L/∂B", grad_B, B_.grad, "B"), ("∂L/∂A", grad_A, A_.grad, "A")):
            assert tuple(got.shape) == tuple(want.shape), f"{name} has shape {tuple(got.shape)}; {factor}'s is {tuple(want.shape)}"
            assert gap(got, want) < 1e-10, f"{name} is off by {gap(got, want):.1e}" + diagnose(got, {
                "did you scale by α/r?": want / (ALPHA / R), "the factor is α/r, not r/α": want * (R / ALPHA) ** 2,
                "a parameter's gradient sums over every position (batch and time), not the first one only":
                    lora_grad_first_position(x, A, B, g, factor)})

    def test_at_init_grad_A_is_zero_and_grad_B_is_not(self, ex):
        A, B = ex.init_lora(D_IN, D_OUT, R)
        x, g = torch.randn(6, D_IN), torch.randn(6, D_OUT)
        grad_A, grad_B = ex.lora_grads(x, A, B, g, ALPHA, R)
        assert torch.count_nonzero(grad_A) == 0, "∂L/∂A must vanish while B = 0: the path from A to the output goes through B"
        assert grad_B.abs().max() > 0, "∂L/∂B must be nonzero at init: it sees A x, and A is random"

    def test_both_zero_means_nothing_moves(self, ex):
        x, g = torch.randn(6, D_IN, **f64), torch.randn(6, D_OUT, **f64)
        grad_A, grad_B = ex.lora_grads(x, torch.zeros(R, D_IN, **f64), torch.zeros(D_OUT, R, **f64), g, ALPHA, R)
        assert torch.count_nonzero(grad_A) == 0 and torch.count_nonzero(grad_B) == 0, \
            "with A = B = 0 both gradients must be zero: that is why A starts random"


def lora_grad_first_position(x, A, B, g, factor):
    """The gradient of A or B from the first position alone: what a gradient that forgets to sum gives."""
    A_, B_ = A.clone().requires_grad_(), B.clone().requires_grad_()
    ((ALPHA / R) * (x.reshape(-1, D_IN)[:1] @ A_.T) @ B_.T).backward(g.reshape(-1, D_OUT)[:1])
    return (A_ if factor == "A" else B_).grad


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
        lora.apply_lora(model, rank=R, alpha=ALPHA, targets="all-linear")
        shapes = [(m.in_features, m.out_features) for _, m in lora.lora_layers(model)]
        trainable, _ = lora.count_parameters(model)
        n = ex.lora_model_param_count(shapes, R)
        assert n == trainable, f"{n} for {len(shapes)} layers; the adapted model trains {trainable}"


class TinyLoRA(nn.Module):
    """A minimal adapter layer to plug into inject_lora: base(x) + B A x, with B nonzero so wiring shows."""

    def __init__(self, base, r=2):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features))
        self.lora_B = nn.Parameter(torch.randn(base.out_features, r))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.T) @ self.lora_B.T


class Attention(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.q, self.q_proj, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.norm = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, x):
        return self.mlp(self.norm(self.q(x) + self.q_proj(x) + self.v(x)))


class Toy(nn.Module):
    """Embedding, two blocks in a ModuleList, a head: names like blocks.0.q, blocks.1.mlp.2."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList([Attention(), Attention()])
        self.head = nn.Linear(8, 10)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def structure(model):
    """What a refused injection must leave as it was: module types and trainable flags."""
    return [(n, type(m)) for n, m in model.named_modules()], trainable(model)


class TestInject:
    EXERCISE = "inject"

    def test_replaces_exactly_the_named_linears_and_returns_them(self, ex):
        model = Toy()
        before = dict(model.named_modules())
        calls = []
        replaced = ex.inject_lora(model, ["q", "v"], lambda linear: calls.append(linear) or TinyLoRA(linear))
        want = ["blocks.0.q", "blocks.0.v", "blocks.1.q", "blocks.1.v"]
        got = list(replaced) if isinstance(replaced, dict) else replaced
        assert isinstance(replaced, dict) and got == want, (f"returned {got!r}; want {{name: replaced linear}} for {want}"
            + ("; did you match substrings? 'q' names blocks.0.q, not blocks.0.q_proj (a name equal to the target "
               "or ending in '.' + target)" if isinstance(replaced, dict) and "blocks.0.q_proj" in replaced else ""))
        for name in want:
            assert replaced[name] is before[name], f"{name}: return the nn.Linear that was replaced, not a copy"
            layer = model.get_submodule(name)
            assert isinstance(layer, TinyLoRA) and layer.base is before[name], \
                f"{name} must now be make_layer(the original linear), got {type(layer).__name__}"
        assert len(calls) == 4, f"make_layer was called {len(calls)} times for 4 replaced layers"
        assert model.get_submodule("blocks.0.q_proj") is before["blocks.0.q_proj"], "blocks.0.q_proj is not named by 'q'"

    def test_only_the_new_layers_own_parameters_train(self, ex):
        model = Toy()
        ex.inject_lora(model, ["q", "v"], TinyLoRA)
        want = {f"blocks.{i}.{n}.lora_{f}" for i in (0, 1) for n in ("q", "v") for f in "AB"}
        got = trainable(model)
        frozen, train = sorted(got - want), sorted(want - got)
        assert got == want, ("; ".join(filter(None, [
            f"{frozen[:4]} should be frozen" if frozen else "", f"{train[:4]} should train" if train else "",
            "the wrapped linear's weight and bias stay frozen" if any(".base." in n for n in frozen) else "",
            "freeze everything else too (embeddings, norms, other layers)"
            if any(n.startswith(("embed", "head")) or ".norm." in n for n in frozen) else ""])))

    def test_plugs_in_the_library_layer_and_keeps_the_output(self, ex):
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_preset("test"))
        idx = torch.randint(0, model.config.vocab_size, (2, 8))
        with torch.no_grad():
            before = model(idx)[0]
        replaced = ex.inject_lora(model, "c_attn", functools.partial(lora.LoRALinear, rank=R, alpha=ALPHA))
        assert len(replaced) == model.config.n_layer, f"{len(replaced)} layers replaced; the model has {model.config.n_layer} c_attn"
        with torch.no_grad():
            after = model(idx)[0]
        assert torch.equal(before, after), "with the library's LoRALinear (B = 0 at init) the logits must not change"
        n, _ = lora.count_parameters(model)
        want = sum(R * (m.in_features + m.out_features) for m in replaced.values())
        assert n == want, f"{n} trainable parameters; the adapters hold {want}: freeze everything but A and B"

    def test_works_on_a_plain_sequential(self, ex):
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
        x = torch.randn(4, 6)
        replaced = ex.inject_lora(model, ["0", "2"], TinyLoRA)
        assert list(replaced) == ["0", "2"] and all(isinstance(model[i], TinyLoRA) for i in (0, 2)), \
            "an nn.Sequential's layers are named '0', '1', ...: put the new layer in place of each"
        assert tuple(model(x).shape) == (4, 3)

    @pytest.mark.parametrize("targets", [["q", "nope"], ["norm"], []], ids=["unknown", "not_linear", "empty"])
    def test_a_target_that_names_no_linear_is_refused_and_nothing_changes(self, ex, targets):
        model = Toy()
        before = structure(model)
        with pytest.raises(ValueError):
            ex.inject_lora(model, targets, TinyLoRA)
        assert structure(model) == before, "a refused injection must leave the model as it was: check every target first"

    def test_a_second_injection_is_refused_instead_of_stacking(self, ex):
        model = Toy()
        ex.inject_lora(model, ["q"], TinyLoRA)
        before = structure(model)
        with pytest.raises(ValueError):  # q is a TinyLoRA now: no nn.Linear is named q any more
            ex.inject_lora(model, ["q"], TinyLoRA)
        assert structure(model) == before, "injecting twice must not wrap the adapter layers again"


def lora_output(x, W, b, A, B, s):
    return x @ W.T + (0 if b is None else b) + s * (x @ A.T) @ B.T


class TestLoraBackward:
    EXERCISE = "lora_backward"
    S = ALPHA / R

    def autograd_grads(self, x, W, b, A, B, g):
        """(∂L/∂x, ∂L/∂A, ∂L/∂B) from autograd on the layer's formula."""
        x_, A_, B_ = (t.clone().requires_grad_() for t in (x, A, B))
        lora_output(x_, W, b, A_, B_, self.S).backward(g)
        return x_.grad, A_.grad, B_.grad

    def setup_tensors(self):
        W, b, A, B = lora_tensors()
        return torch.randn(2, 3, D_IN, **f64), W, b, A, B, torch.randn(2, 3, D_OUT, **f64)

    def test_grad_x_matches_autograd(self, ex):
        x, W, b, A, B, g = self.setup_tensors()
        want = self.autograd_grads(x, W, b, A, B, g)[0]
        got = ex.grad_x(g, W, A, B, self.S)
        assert tuple(got.shape) == tuple(x.shape), f"∂L/∂x has shape {tuple(got.shape)}; x's is {tuple(x.shape)}"
        assert gap(got, want) < 1e-10, f"∂L/∂x is off by {gap(got, want):.1e}" + diagnose(got, {
            "the frozen base passes gradient to x too: did you leave out W's part?": want - g @ W,
            "did you forget the low-rank path's part?": g @ W,
            "did you scale the low-rank part by α/r?": g @ W + (want - g @ W) / self.S})

    def test_grad_A_matches_autograd(self, ex):
        x, W, b, A, B, g = self.setup_tensors()
        want = self.autograd_grads(x, W, b, A, B, g)[1]
        got = ex.grad_A(x, g, B, self.S)
        assert tuple(got.shape) == (R, D_IN), f"∂L/∂A has shape {tuple(got.shape)}; A's is {(R, D_IN)}"
        assert gap(got, want) < 1e-10, f"∂L/∂A is off by {gap(got, want):.1e}" + diagnose(got, {
            "did you scale by α/r?": want / self.S,
            "a parameter's gradient sums over every position, not the first one only":
                lora_grad_first_position(x, A, B, g, "A")})

    def test_grad_B_matches_autograd(self, ex):
        x, W, b, A, B, g = self.setup_tensors()
        want = self.autograd_grads(x, W, b, A, B, g)[2]
        got = ex.grad_B(x, g, A, self.S)
        assert tuple(got.shape) == (D_OUT, R), f"∂L/∂B has shape {tuple(got.shape)}; B's is {(D_OUT, R)}"
        assert gap(got, want) < 1e-10, f"∂L/∂B is off by {gap(got, want):.1e}" + diagnose(got, {
            "did you scale by α/r?": want / self.S,
            "a parameter's gradient sums over every position, not the first one only":
                lora_grad_first_position(x, A, B, g, "B")})

    def test_function_computes_the_layer_output(self, ex):
        x, W, b, A, B, _ = self.setup_tensors()
        for bias in (b, None):
            got = ex.lora_linear(x, W, bias, A, B, self.S)
            want = lora_output(x, W, bias, A, B, self.S)
            assert gap(got, want) < 1e-12, f"h is off by {gap(got, want):.1e} (bias {'None' if bias is None else 'given'})" \
                + diagnose(got, {"did you scale the low-rank path by α/r?": lora_output(x, W, bias, A, B, 1.0)})

    def test_gradcheck_confirms_the_hand_written_backward(self, ex):
        W, b, A, B = lora_tensors(d_in=5, d_out=4, r=2)
        x = torch.randn(3, 5, **f64, requires_grad=True)
        A, B = A.clone().requires_grad_(), B.clone().requires_grad_()
        out = ex.lora_linear(x, W, b, A, B, self.S)
        name = type(out.grad_fn).__name__
        assert name == "LoRAFunctionBackward", (f"the output's grad_fn is {name}: lora_linear must go through "
                                                "LoRAFunction.apply, so that its backward is yours, not autograd's")
        ok = torch.autograd.gradcheck(lambda x, A, B: ex.lora_linear(x, W, b, A, B, self.S), (x, A, B),
                                      raise_exception=False)
        assert ok, "gradcheck: your backward's gradients differ from finite differences of your forward"

    def test_frozen_weight_and_bias_get_no_gradient(self, ex):
        x, W, b, A, B, g = self.setup_tensors()
        W, b, A, B = (t.clone().requires_grad_() for t in (W, b, A, B))
        ex.lora_linear(x, W, b, A, B, self.S).backward(g)
        assert W.grad is None and b.grad is None, ("backward must return None for W and b: they are frozen, and "
                                                   "not forming ∂L/∂W (d_out × d_in) is what LoRA saves")
        assert A.grad is not None and B.grad is not None, "A and B must get their gradients"


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
                f"probabilities 0.5 + k·{want:.5f}, k = 1..{count}: the last one is offset, and 0.5 itself is the level 0")

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
        plain = 8 * lora.nbytes(lora.quantize_nf4(w, blocksize=blocksize)) / n
        got = ex.bits_per_parameter(blocksize)
        assert abs(got - plain) < 1e-12, f"{got} bits at blocksize {blocksize}; lora.nf4 stores {plain}: 4 per code + 32 per block"
        dq = 8 * lora.nbytes(lora.quantize_nf4(w, blocksize=blocksize, double_quant=True)) / n - 32 / n  # less the one mean
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


def nf4_quantize(w, blocksize):
    """The quantiser handed to LinearNF4: the library's NF4 codes and float32 block absmax."""
    q = lora.quantize_nf4(w, blocksize=blocksize)
    return q.packed, q.absmax


def nf4_dequantize(packed, absmax, blocksize, shape):
    """ŵ = level[code] · absmax of its block, from the library's codebook and nibble order."""
    n = math.prod(shape)
    codes = lora.unpack_nibbles(packed)[:n].long()
    return (lora.nf4_codebook()[codes] * absmax.repeat_interleave(blocksize)[:n]).reshape(shape)


def quantized(ex, d_in=D_IN, d_out=D_OUT, bias=True, blocksize=32):
    """(the student's LinearNF4 of a random nn.Linear, that linear, ŵ its weight as quantised)."""
    linear = nn.Linear(d_in, d_out, bias=bias)
    layer = ex.LinearNF4(linear, nf4_quantize, nf4_dequantize, blocksize)
    return layer, linear, nf4_dequantize(*nf4_quantize(linear.weight.detach(), blocksize), blocksize, (d_out, d_in))


def float_tensors(module):
    return [(n, t) for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_floating_point()]


class TestQuantizedLinear:
    EXERCISE = "quantized_linear"

    def test_holds_codes_and_scales_and_no_float_weight(self, ex):
        layer, linear, _ = quantized(ex)
        big = [n for n, t in float_tensors(layer) if t.numel() >= D_OUT * D_IN]
        assert not big, f"{big} hold a float copy of the weight: keep only the 4-bit codes and the block scales"
        codes = [n for n, t in layer.state_dict().items() if t.dtype == torch.uint8 and t.numel() == D_OUT * D_IN // 2]
        assert codes, "the state dict must hold the packed codes, two per uint8 byte: register them as buffers"
        assert not [n for n, p in layer.named_parameters() if p.requires_grad], "nothing in the layer trains"

    def test_forward_is_the_linear_map_of_the_dequantised_weight(self, ex):
        for bias in (True, False):
            layer, linear, w_hat = quantized(ex, bias=bias)
            x = torch.randn(2, 3, D_IN)
            got = layer(x)
            want = F.linear(x, w_hat, linear.bias)
            assert tuple(got.shape) == (2, 3, D_OUT), f"output shape {tuple(got.shape)}: (..., d_in) -> (..., d_out)"
            assert gap(got, want) < 1e-5, f"y is off by {gap(got, want):.1e} (bias={bias})" + diagnose(got.double(), {
                "the layer computes with the float weight: use ŵ, the 4-bit weight dequantised":
                    F.linear(x, linear.weight, linear.bias).detach().double(),
                "did you forget the bias?": F.linear(x, w_hat).double()})

    def test_input_gradient_flows_through_the_dequantised_weight(self, ex):
        layer, _, w_hat = quantized(ex)
        x = torch.randn(2, 3, D_IN, requires_grad=True)
        g = torch.randn(2, 3, D_OUT)
        out = layer(x)
        assert out.requires_grad, "the output does not depend on x for autograd: the layers below would get no gradient"
        out.backward(g)
        assert x.grad is not None and gap(x.grad, g @ w_hat) < 1e-5, \
            "∂L/∂x must be g ŵ: the gradient goes back through the dequantised weight"

    def test_adapters_below_train_as_on_the_dequantised_float_model(self, ex):
        # QLoRA: an adapter on the first layer learns through the frozen 4-bit second layer
        first, _, w1 = quantized(ex, D_IN, 16)
        second, _, w2 = quantized(ex, 16, D_OUT)
        A, B = torch.randn(R, D_IN, requires_grad=True), torch.randn(16, R, requires_grad=True)
        x, g = torch.randn(5, D_IN), torch.randn(5, D_OUT)
        h = first(x) + (x @ A.T) @ B.T
        second(torch.relu(h)).backward(g)
        A_, B_ = A.detach().clone().requires_grad_(), B.detach().clone().requires_grad_()
        h_ = F.linear(x, w1, first.bias) + (x @ A_.T) @ B_.T
        F.linear(torch.relu(h_), w2, second.bias).backward(g)
        assert A.grad is not None and gap(A.grad, A_.grad) < 1e-4 and gap(B.grad, B_.grad) < 1e-4, \
            "the adapter's gradients differ from those of the same model with float ŵ weights"

    def test_the_library_adapter_wraps_it_as_a_quantized_base(self, ex):
        layer, linear, w_hat = quantized(ex)
        sizes = tuple(getattr(layer, a, None) for a in ("in_features", "out_features"))
        assert sizes == (D_IN, D_OUT) and hasattr(layer, "bias"), \
            f"in_features, out_features = {sizes}; like nn.Linear the layer needs them, and bias"
        adapted = lora.LoRALinear(layer, rank=R, alpha=ALPHA)
        with torch.no_grad():
            adapted.lora_B.normal_()
            x = torch.randn(3, D_IN)
            want = F.linear(x, w_hat, linear.bias) + (ALPHA / R) * (x @ adapted.lora_A.T) @ adapted.lora_B.T
            assert gap(adapted(x), want) < 1e-5, "lora.LoRALinear over your layer must compute ŵ x + b + (α/r)·B A x"
            merged = lora.merge_and_unload(nn.Sequential(adapted))[0]
            assert gap(merged.weight, w_hat + adapted.delta_weight()) < 1e-6, "the merge is into ŵ, from dequantize_weight()"

    def test_backward_keeps_no_float_copy_of_the_weight(self, ex):
        layer, _, _ = quantized(ex, 24, 40)  # ŵ has 960 entries; x has 2·24
        x = torch.randn(2, 24, requires_grad=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = layer(x)
        copies = [tuple(t.shape) for t in saved if t.is_floating_point() and t.numel() >= 40 * 24]
        assert not copies, (f"autograd keeps float tensors of shapes {copies} for backward: a (d_out, d_in) copy of ŵ per "
                            "layer is the memory QLoRA saves. Write a torch.autograd.Function that dequantises again "
                            "in backward")
        out.sum().backward()
        assert x.grad is not None


def dora_reference(x, W, b, A, B, m, detach=True):
    adapted = W + (ALPHA / R) * B @ A
    norm = adapted.norm(dim=1, keepdim=True)
    return F.linear(x, m[:, None] * adapted / (norm.detach() if detach else norm), b)


class TestDora:
    EXERCISE = "dora"

    def test_norm_is_taken_per_output_unit(self, ex):
        W = torch.randn(D_OUT, D_IN, **f64)
        got = ex.weight_norm(W)
        assert tuple(got.shape) == (D_OUT,), (f"shape {tuple(got.shape)}: one norm per output unit, over its d_in "
                                              "weights (a row of the (d_out, d_in) weight)")
        assert gap(got, W.norm(dim=1)) < 1e-12, "the L2 norm of each row" + diagnose(got, {
            "did you square-root the sum of squares?": W.square().sum(1)})

    def test_starts_at_the_base_model(self, ex):
        W, b, A, _ = lora_tensors()
        x = torch.randn(3, 5, D_IN, **f64)
        out = ex.dora_forward(x, W, b, A, torch.zeros(D_OUT, R, **f64), ALPHA, R, W.norm(dim=1))
        assert gap(out, x @ W.T + b) < 1e-12, "with B = 0 and m = ‖W0‖ the layer must be the base W0 x + b"

    def test_output_is_magnitude_times_direction(self, ex):
        W, b, A, B = lora_tensors()
        m = torch.rand(D_OUT, **f64) + 0.5
        x = torch.randn(3, 5, D_IN, **f64)
        got = ex.dora_forward(x, W, b, A, B, ALPHA, R, m)
        want = dora_reference(x, W, b, A, B, m)
        adapted = W + (ALPHA / R) * B @ A
        assert gap(got, want) < 1e-10, f"the output is off by {gap(got, want):.1e}" + diagnose(got, {
            "did you scale ΔW by α/r?": dora_reference(x, W, b, A, B * (R / ALPHA), m),
            "the norm is per output unit (a row of W), not per input column":
                F.linear(x, m[:, None] * adapted / adapted.norm(dim=0, keepdim=True), b),
            "m scales the direction, not the bias": dora_reference(x, W, None, A, B, m) + m * b,
            "did you forget the bias?": dora_reference(x, W, None, A, B, m)})

    def test_norm_is_a_constant_in_backward(self, ex):
        W, b, A, B = lora_tensors()
        m = torch.rand(D_OUT, **f64) + 0.5
        x, g = torch.randn(6, D_IN, **f64), torch.randn(6, D_OUT, **f64)
        grads = {}
        for who, fn in (("got", ex.dora_forward), ("want", dora_reference),
                        ("attached", functools.partial(dora_reference, detach=False))):
            A_, B_, m_ = (t.clone().requires_grad_() for t in (A, B, m))
            (fn(x, W, b, A_, B_, ALPHA, R, m_) if who == "got" else fn(x, W, b, A_, B_, m_)).backward(g)
            grads[who] = [t.grad if t.grad is not None else torch.zeros_like(t) for t in (A_, B_, m_)]
        for i, name in enumerate(("A", "B", "m")):
            got, want, attached = grads["got"][i], grads["want"][i], grads["attached"][i]
            assert gap(got, want) < 1e-10, f"∂L/∂{name} is off by {gap(got, want):.1e}" + diagnose(got, {
                "the norm must be a constant in backward (DoRA §4.3): detach it": attached})


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
                                             f"{want:.4f}: keep the top `rank` singular directions, with their singular values")

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
