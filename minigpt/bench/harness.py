"""Measuring tools for `python -m minigpt.bench`: timers, memory readings, byte counts, subprocess isolation.

Every timing follows one recipe: pin the thread count, run warm-up calls that are thrown away (first
calls allocate buffers and pick kernels), then time many repeats and report the median with the
spread (interquartile range and min/max). The median is robust to the odd slow repeat caused by other
processes on a shared machine; the spread shows how noisy the machine was.

run_isolated calls one job function in a process of its own and returns its result plus the
process's peak memory: each configuration whose peak memory we report runs alone, so peaks from
different configurations do not mix.
"""

import contextlib
import ctypes
import functools
import gc
import importlib
import multiprocessing
import os
import statistics
import time

import torch

from lora.checks import check_int
from minigpt.device import ru_maxrss_bytes


def pin_threads(threads):
    """Pin torch's intra-op thread count (and OpenMP's, for libraries read at start-up); returns it."""
    check_int("threads", threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    return torch.get_num_threads()


@contextlib.contextmanager
def pinned_threads(threads):
    """pin_threads inside the block; the previous thread count and OMP_NUM_THREADS come back after it."""
    previous, previous_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        yield pin_threads(threads)
    finally:
        torch.set_num_threads(previous)
        if previous_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous_env


def load_average():
    """The 1, 5 and 15 minute load averages rounded to 2 decimals, or None where the OS has none."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def summarize(samples):
    """Median, quartiles, min, max and count of a list of durations in seconds."""
    if not samples:
        raise ValueError("summarize needs at least one sample")
    s = sorted(samples)
    q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else (s[0], s[0], s[0])
    return dict(median=statistics.median(s), q1=q1, q3=q3, min=s[0], max=s[-1], n=len(s))


def calls_per_sample(fn, min_seconds):
    """How many back-to-back calls make one sample last at least min_seconds (like timeit's autorange).

    Sub-millisecond calls are timed in groups so that the timer's resolution and Python's loop
    overhead stay small against the measured time; each sample is then divided by the group size.
    """
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - start >= min_seconds or number >= 1 << 16:
            return number
        number *= 2


def time_interleaved(fns, warmup, repeats, min_seconds=0.005):
    """Time several callables side by side; returns {name: summarize(seconds per call)}.

    Repeats are taken round-robin (a, b, c, a, b, c, ...) rather than one callable after the other,
    so a burst of load from another process slows every variant alike instead of biasing one ratio.
    The garbage collector is off while timing, as in timeit.
    """
    check_int("warmup", warmup, least=0)
    check_int("repeats", repeats)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    numbers = {name: calls_per_sample(fn, min_seconds) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                for _ in range(numbers[name]):
                    fn()
                samples[name].append((time.perf_counter() - start) / numbers[name])
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: dict(summarize(s), calls_per_sample=numbers[name]) for name, s in samples.items()}


def time_fn(fn, warmup, repeats, min_seconds=0.005):
    """summarize() of fn's duration in seconds: time_interleaved with a single callable."""
    return time_interleaved({"fn": fn}, warmup, repeats, min_seconds)["fn"]


def tensor_bytes(tensors):
    """Bytes held by an iterable of tensors, read from the tensors; a shared storage is counted once."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = (t.untyped_storage().data_ptr(), t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def optimizer_state_bytes(optimizer):
    """Bytes of every tensor in an optimizer's state (AdamW: exp_avg, exp_avg_sq and a 4-byte step)."""
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


def _status_kib(field):
    """A 'VmXXX: n kB' line of /proc/self/status in KiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes():
    """Resident memory of this process now (Linux /proc; None elsewhere)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes():
    """Peak resident memory of this process.

    resource.getrusage's ru_maxrss is the textbook reading, but Linux carries the high-water mark across
    fork/exec, so a child started by a large parent reports the parent's peak. /proc's VmHWM is the same
    counter for this process's own memory only; we use it where it exists and ru_maxrss elsewhere.
    """
    kib = _status_kib("VmHWM")
    return ru_maxrss_bytes() if kib is None else kib * 1024


def release_free_memory():
    """Collect garbage and hand freed heap memory back to the OS (glibc's malloc_trim); True if trimmed.

    Memory freed by Python objects often stays in the C heap and so stays resident. After building a
    QLoRA model (float weights quantised, then freed) that leftover would count in the training peak.
    """
    gc.collect()
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return False


def reset_peak_rss():
    """Restart the peak-memory counter (VmHWM) from the current resident size; True where supported.

    Linux's /proc/self/clear_refs accepts "5" for exactly this. It lets a job report the peak of its
    training steps apart from the peak of building the model (a QLoRA model is built in float first).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def _context():
    """A fork server that has imported torch and the benchmark jobs once; each job is forked from it.

    A fresh `python` per job would spend seconds importing torch again. A child forked from the
    server starts with torch loaded and nothing else, and the server never ran a torch kernel, so
    no thread pool is copied mid-use. Where fork servers do not exist (Windows), spawn.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # torch._dynamo: torch.optim imports it on first use, which alone takes seconds
    ctx.set_forkserver_preload(["torch._dynamo", "minigpt.bench.train_step", "minigpt.bench.throughput"])
    return ctx


def run_isolated(job, kwargs, timeout):
    """Run `job` ("package.module:function") with kwargs in a fresh process of its own.

    Returns the job's result dict with status "ok", peak_rss_bytes and ru_maxrss_bytes added, or
    {"status": "failed", "error": ...} when the job raises, the process dies or runs past `timeout` s.
    """
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(job, kwargs, sender))
    proc.start()
    sender.close()  # the child holds the other copy; EOF once it exits
    try:
        if receiver.poll(timeout):
            return receiver.recv()
        proc.kill()
        return dict(status="failed", error=f"timed out after {timeout} s")
    except EOFError:  # exited without a result: killed, or crashed in C code
        proc.join()
        return dict(status="failed", error=f"the process died with exit code {proc.exitcode}")
    finally:
        proc.join()
        receiver.close()


def _child(job, kwargs, sender):
    try:
        result = run_inline(job, kwargs)
        result.update(peak_rss_bytes=peak_rss_bytes(), ru_maxrss_bytes=ru_maxrss_bytes())
    except Exception as e:  # reported in the table, so one failing configuration does not end the run
        result = dict(status="failed", error=f"{type(e).__name__}: {e}")
    sender.send(result)
    sender.close()


def _ms_text(milliseconds):
    return f"{milliseconds:,.0f}" if milliseconds >= 100 else f"{milliseconds:.3g}"


def ms(seconds):
    """Seconds as milliseconds for tables: three significant figures, whole numbers from 100 ms up."""
    return None if seconds is None else _ms_text(seconds * 1e3)


def spread_ms(summary):
    """The interquartile range of a summarize() result, in ms, as "q1-q3"."""
    return None if summary is None else f"{_ms_text(summary['q1'] * 1e3)}-{_ms_text(summary['q3'] * 1e3)}"


def mib(nbytes):
    """Bytes as MiB with one decimal, for tables."""
    return None if nbytes is None else f"{nbytes / 2**20:.1f}"


def human_bytes(nbytes):
    """Bytes with a binary unit and three significant figures: "512 B", "30.8 KiB", "1.23 GiB"."""
    if nbytes is None:
        return None
    for unit in ("B", "KiB", "MiB"):
        if nbytes < 1024:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} GiB"


def make_target(name, value, target, met, digits=3):
    """One checked target of a section: the measured value, the target in words, and whether it was met."""
    text = "n/a" if value is None else f"{value:.{digits}f}"
    return dict(name=name, value=value, value_text=text, target=target, met=None if value is None else bool(met))


def make_section(title, tables, targets=(), notes=(), results=()):
    """The dict every section returns: markdown tables (caption, headers, rows) plus the raw results."""
    return dict(title=title, tables=list(tables), targets=list(targets), notes=list(notes), results=list(results))


def _job(job):
    module_name, _, func_name = job.partition(":")
    return getattr(importlib.import_module(module_name), func_name)


def run_inline(job, kwargs):
    """Run `job` in this process, for smoke tests: same result shape as run_isolated, but the peak
    memory fields are None because this process's peak is not the job's own."""
    result = dict(status="ok")
    result.update(_job(job)(**kwargs))
    result.update(peak_rss_bytes=None, ru_maxrss_bytes=None)
    return result
