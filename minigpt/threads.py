"""How many threads torch computes with, and how its idle OpenMP threads wait: chosen for a busy machine.

torch's CPU kernels run on an OpenMP thread pool (GNU libgomp in the Linux wheels) of one thread per
core. Between two parallel regions a worker spins, burning its core, before it sleeps (libgomp: for
300,000 spins, about 3 ms). When another process holds one of the cores, every region waits for the
worker that shares a core with it, and the spinning workers take time slices from it: a tiny-model
training step on 2 cores beside busy processes went from about 0.05 s to 2 to 4 s (docs/results.md).
Two remedies:

- a short spin (Note: OpenMP wait policy): idle workers spin for 1,000 spins (about 10 µs) and then sleep. Back-to-back parallel
  regions still find their workers awake, so an idle machine keeps its speed, and a worker that has
  to share its core sleeps instead of taking the other process's time slices. Sleeping at once
  (OMP_WAIT_POLICY=PASSIVE) copes as well with competition, but measured 27 to 39% slower on an idle
  machine, because each parallel region must wake its workers.
  libgomp reads GOMP_SPINCOUNT (which wins over the wait policy) once, when torch loads it, so it
  must be in the environment before the first `import torch`; set after it, it changes nothing.
  We also set OMP_WAIT_POLICY=PASSIVE for the other OpenMP runtimes (LLVM's libomp on macOS, Intel's),
  which read the standard variable and not GOMP_SPINCOUNT. minigpt/__init__.py calls
  choose_wait_policy() before it imports anything else, which covers `python -m minigpt.<command>`
  (Python imports the package first) and code that imports minigpt before torch. A notebook that
  imports torch first keeps OpenMP's default; the thread count below still applies there.
- as many threads as there are free cores: a thread that has to share its core with another process
  makes every parallel region wait for it. At the start of a run we count the processes that are
  running right now (Linux: /proc/loadavg's runnable count, the least of a few readings) and use the
  cores they leave free, at least one. Measured on 2 cores (docs/results.md, benchmark section 7):
  the tiny model's training step takes about 45 ms on 2 threads and 72 ms on 1 when the machine is
  idle, and beside one busy process 1 thread (77 to 82 ms) beats 2 (84 to 104 ms). The count is read
  once per run: a competitor that starts later is met by the short spin.

The user's choice wins: an explicit thread count (`--threads`, TrainConfig.threads), then
OMP_NUM_THREADS; and when OMP_WAIT_POLICY or GOMP_SPINCOUNT is set, neither is touched. One limit
applies to the user's count too: it is clamped to the usable cores, and the ThreadChoice says so.
More threads than cores only make every parallel region wait for the threads that share a core, and
a count like 100,000 would make OpenMP try to create that many threads (a crash, not a slow run).
This module imports no torch at its top: it runs before torch is loaded.
"""

import contextlib
import os
import sys
import time
from dataclasses import dataclass

LOADAVG = "/proc/loadavg"  # Linux's scheduler counts (a module constant, so tests can point it at a fake)
READINGS = 5  # /proc/loadavg readings, 10 ms apart; the least is taken (a reading catches short-lived work too)


SPIN_COUNT = 1000  # libgomp spins before an idle worker sleeps; its default is 300,000
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def choose_wait_policy():
    """Unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT, set GOMP_SPINCOUNT=1000 (libgomp: spin
    briefly, then sleep) and OMP_WAIT_POLICY=PASSIVE (the other runtimes: sleep at once).

    Returns the policy in words. Takes effect only when called before torch is first imported.
    """
    if not any(os.environ.get(v) for v in WAIT_VARIABLES):
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return wait_policy()


def wait_policy(environ=None, platform=None):
    """How torch's idle OpenMP workers wait, in words, from `environ` (default: os.environ) as torch was
    loaded with it. GOMP_SPINCOUNT counts only on Linux, whose torch wheels use GNU libgomp; elsewhere
    the OpenMP runtime reads OMP_WAIT_POLICY alone."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    policy, spins = environ.get("OMP_WAIT_POLICY"), environ.get("GOMP_SPINCOUNT")
    if spins and platform.startswith("linux"):
        return f"spin {spins} times, then sleep (GOMP_SPINCOUNT={spins}" + (f", OMP_WAIT_POLICY={policy})"
                                                                              if policy else ")")
    if policy:
        return policy.upper()
    return "OpenMP's default (spin, then sleep)"


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
            with open(LOADAVG, encoding="ascii") as f:
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


def clamp_to_cores(count, source):
    """(count, why) for a thread count the user gave through `source`: the usable cores when count is above them."""
    cores = usable_cores()
    if count > cores:
        return cores, f"{source} {count}, clamped to the {cores} usable cores"
    return count, source


def user_threads(requested=None):
    """The user's thread count, checked and clamped: (threads, reason), or None to fit the free cores.

    Raises:
        ValueError: requested, or OMP_NUM_THREADS, is not a positive integer.
    """
    from lora.checks import check_int  # here, not at the top: lora imports torch

    if requested is not None:
        return clamp_to_cores(check_int("threads", requested), "requested")
    env = os.environ.get("OMP_NUM_THREADS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"OMP_NUM_THREADS={env!r}: must be a positive integer")
        return clamp_to_cores(int(env), "OMP_NUM_THREADS")
    return None


def choose_threads(requested=None):
    """The thread count of a run: `requested`, else OMP_NUM_THREADS (either clamped to the usable
    cores), else the cores free right now.

    Raises:
        ValueError: requested, or OMP_NUM_THREADS, is not a positive integer.
    """
    chosen = user_threads(requested)
    if chosen is not None:
        return ThreadChoice(*chosen, wait_policy())
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
