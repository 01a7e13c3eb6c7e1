"""How many threads torch computes with, and how its idle OpenMP threads wait: chosen for a busy machine.

torch's CPU kernels run on an OpenMP thread pool (GNU libgomp in the Linux wheels) of one thread per
core. Between two parallel regions a worker spins, burning its core, before it sleeps. When another
process holds one of the cores, every region waits for the worker that shares a core with it, and the
spinning workers take time slices from it: a tiny-model training step on 2 cores with one busy
competitor went from about 0.08 s to 4 s (docs/results.md). Two remedies:

- OMP_WAIT_POLICY=PASSIVE: idle workers sleep at once instead of spinning. libgomp reads the variable
  once, when torch loads it, so it must be in the environment before the first `import torch`.
  Measured (torch 2.13, libgomp): set after `import torch` it changes nothing; set before, it removes
  most of the slowdown. minigpt/__init__.py therefore calls prefer_passive_wait() before it imports
  anything else, which covers `python -m minigpt.<command>` (Python imports the package first) and
  code that imports minigpt before torch. A notebook that imports torch first keeps OpenMP's default;
  the thread count below still applies there.
- fewer threads: one thread has no worker to wait for, and it can be set at any time
  (torch.set_num_threads). Small models gain little from a second thread, since their matrices are
  too small to split well, so they get one; larger models get every usable core.

The user's choice always wins: an explicit thread count (`--threads`, TrainConfig.threads), then
OMP_NUM_THREADS, and OMP_WAIT_POLICY when it is set. This module imports no torch at its top: it runs
before torch is loaded.
"""

import contextlib
import os
from dataclasses import dataclass

SMALL_MODEL_PARAMS = 5_000_000  # at most this many parameters: one thread (the tiny preset has 0.8M)


def prefer_passive_wait():
    """Set OMP_WAIT_POLICY=PASSIVE unless the user set a policy; returns the policy in the environment.

    Takes effect only when called before torch is first imported (see the module docstring).
    """
    return os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def wait_policy():
    """The wait policy torch's OpenMP runs with, in words."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    return policy.upper() if policy else "OpenMP's default (spin, then sleep)"


def usable_cores():
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


@dataclass
class ThreadChoice:
    threads: int       # torch.set_num_threads
    reason: str        # why: "--threads", "OMP_NUM_THREADS" or the model's size
    wait_policy: str   # OMP_WAIT_POLICY in effect

    def describe(self):
        return f"{self.threads} thread(s) ({self.reason}); OpenMP wait policy {self.wait_policy}"


def choose_threads(n_params, requested=None):
    """The thread count for a model of n_params parameters: `requested`, else OMP_NUM_THREADS, else fitted.

    Raises:
        ValueError: requested, or OMP_NUM_THREADS, is not a positive integer.
    """
    from lora.checks import check_int  # here, not at the top: lora imports torch

    if requested is not None:
        return ThreadChoice(check_int("threads", requested), "requested", wait_policy())
    env = os.environ.get("OMP_NUM_THREADS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"OMP_NUM_THREADS={env!r}: must be a positive integer")
        return ThreadChoice(int(env), "OMP_NUM_THREADS", wait_policy())
    if n_params <= SMALL_MODEL_PARAMS:
        return ThreadChoice(1, f"{n_params / 1e6:.1f}M parameters: too small to gain from more", wait_policy())
    cores = usable_cores()
    return ThreadChoice(cores, f"{n_params / 1e6:.0f}M parameters: every usable core", wait_policy())


def threads_header(requested=None):
    """The thread rule in words, for a run's header printed before its model is built."""
    if requested is not None or os.environ.get("OMP_NUM_THREADS"):
        return choose_threads(0, requested).describe()
    return (f"1 for models up to {SMALL_MODEL_PARAMS / 1e6:g}M parameters, else {usable_cores()} (every usable "
            f"core); OpenMP wait policy {wait_policy()}")


def model_params(model):
    """Distinct parameters of a module (shared tensors once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@contextlib.contextmanager
def fitted_threads(model, requested=None):
    """choose_threads for `model`, applied with torch.set_num_threads inside the block and undone after it;
    yields the ThreadChoice."""
    import torch

    choice = choose_threads(model_params(model), requested)
    previous = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    try:
        yield choice
    finally:
        torch.set_num_threads(previous)
