"""This machine's side of the budget: a timed matmul gives FLOP/s, and a step's time is FLOPs / rate.

The rate is measured, not looked up: a (M, K) @ (K, N) product at the sizes of the model's own layers
(M = B·T tokens, K = C, N = 4C), timed after a warm-up, median of a few samples. Small layers run far
below a CPU's peak, so a matmul at the model's sizes predicts its step better than a large one.
A step's time is then

    seconds = training FLOPs per step / rate

which leaves out what is not a matmul (layer norms, GELU, softmax, the optimizer, Python). Where the
real step's time is known (the fine-tune times a few steps), efficiency = predicted / measured seconds
carries that remainder, and one efficiency scales every prediction for the same model.

saved_tensor_bytes measures what minigpt.budget.memory.activation_bytes predicts: the bytes of the
distinct storages autograd saves during a forward pass, parameters excluded.

Shape legend: M rows (tokens), K inner size, N columns.
"""

import statistics
import time

import torch

from lora.checks import check_float, check_int


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_call(m, k, n, dtype=torch.float32, device="cpu"):
    """(a callable running one (m, k) @ (k, n) product and waiting for it, its FLOPs 2·m·k·n), to time
    beside other work (minigpt.bench.harness.time_interleaved)."""
    for name, value in (("m", m), ("k", k), ("n", n)):
        check_int(name, value)
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(m, k, generator=g, device=device).to(dtype)  # (M, K)
    b = torch.randn(k, n, generator=g, device=device).to(dtype)  # (K, N)

    def call():
        a @ b
        _sync(device)
    return call, 2 * m * k * n


def matmul_rate(m, k, n, dtype=torch.float32, device="cpu", samples=5, min_seconds=0.05):
    """FLOP/s of an (m, k) @ (k, n) matmul here: 2·m·k·n FLOPs over the median time of `samples`
    groups of calls, each group lasting at least min_seconds, after one untimed group."""
    check_int("samples", samples)
    check_float("min_seconds", min_seconds)
    call, flops = matmul_call(m, k, n, dtype, device)
    calls, elapsed = 1, 0.0
    while elapsed < min_seconds:  # calls per group: enough to outlast the timer's resolution
        calls *= 2
        start = time.perf_counter()
        for _ in range(calls):
            call()
        elapsed = time.perf_counter() - start
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - start) / calls)
    return flops / statistics.median(times)


def model_matmul_rate(shape, batch, seq_len, dtype=torch.float32, device="cpu", samples=5):
    """matmul_rate at the model's MLP shape: (B·T, C) @ (C, F), its largest product per block."""
    return matmul_rate(batch * seq_len, shape.n_embd, shape.mlp_width, dtype, device, samples)


def step_seconds(flops, rate, efficiency=1.0):
    """Predicted seconds of a step: flops / (rate · efficiency); efficiency 1 counts matmuls alone."""
    check_float("rate", rate)
    check_float("efficiency", efficiency)
    return flops / (rate * efficiency)


def saved_tensor_bytes(model, *inputs):
    """Bytes autograd saves for backward during model(*inputs): each distinct storage once, the model's
    parameters and buffers excluded (they are held anyway). Returns (bytes, the forward's output)."""
    held = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in held:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*inputs)
    return sum(storages.values()), out
