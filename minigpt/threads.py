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
- as many threads as there are free cores: a thread that has to share its core with another process
  makes every parallel region wait for it. At the start of a run we count the processes that are
  running right now (Linux: /proc/loadavg's runnable count, the least of a few readings) and use the
  cores they leave free, at least one. Measured on 2 cores (docs/results.md, benchmark section 7):
  the tiny model's training step takes 42 ms on 2 threads and 72 ms on 1 when the machine is idle,
  and beside one busy process 1 thread (75 ms) beats 2 (80 to 90 ms, and seconds under heavier load).
  The count is read once per run: a competitor that starts later is met by the passive wait policy.

The user's choice always wins: an explicit thread count (`--threads`, TrainConfig.threads), then
OMP_NUM_THREADS, and OMP_WAIT_POLICY when it is set. This module imports no torch at its top: it runs
before torch is loaded.
"""

import contextlib
import os
import time
from dataclasses import dataclass

READINGS = 5  # /proc/loadavg readings, 10 ms apart; the least is taken (a reading catches short-lived work too)


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


def other_running():
    """Processes (threads) running or waiting for a core right now besides this one; 0 where unknown.

    The fourth field of /proc/loadavg is "runnable/total" scheduling entities, this reader included.
    """
    readings = []
    for i in range(READINGS):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                readings.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):  # not Linux, or an unexpected format
            return 0
        if i + 1 < READINGS:
            time.sleep(0.01)
    return max(0, min(readings))


def free_cores():
    """Usable cores minus the other processes running now, at least 1."""
    return max(1, usable_cores() - other_running())


@dataclass
class ThreadChoice:
    threads: int       # torch.set_num_threads
    reason: str        # why: "requested", "OMP_NUM_THREADS" or the free cores
    wait_policy: str   # OMP_WAIT_POLICY in effect

    def describe(self):
        return f"{self.threads} thread(s) ({self.reason}); OpenMP wait policy {self.wait_policy}"


def choose_threads(requested=None):
    """The thread count of a run: `requested`, else OMP_NUM_THREADS, else the cores free right now.

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
    cores, free = usable_cores(), free_cores()
    return ThreadChoice(free, f"{free} of {cores} cores free now", wait_policy())


def threads_header(requested=None):
    """The thread rule in words, for a run's header printed before its model is built."""
    if requested is not None or os.environ.get("OMP_NUM_THREADS"):
        return choose_threads(requested).describe()
    return f"one per free core ({free_cores()} of {usable_cores()} now); OpenMP wait policy {wait_policy()}"


@contextlib.contextmanager
def fitted_threads(requested=None):
    """choose_threads, applied with torch.set_num_threads inside the block and undone after it;
    yields the ThreadChoice."""
    import torch

    choice = choose_threads(requested)
    previous = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    try:
        yield choice
    finally:
        torch.set_num_threads(previous)
