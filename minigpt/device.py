"""Device choice and mixed precision, in one place.

The rule the whole project follows: use CUDA if present, else Apple's MPS, else the CPU; on CUDA run
the forward pass under bf16 autocast (weights and optimizer state stay float32); elsewhere run float32.
"""

import contextlib
import os
import sys

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(requested="auto"):
    """Return a torch.device: `requested`, or for "auto" the first of cuda, mps, cpu that is available."""
    if requested not in DEVICES:
        raise ValueError(f"device={requested!r}: choose one of {list(DEVICES)}")
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch.cuda.is_available() is False")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' was requested but torch.backends.mps.is_available() is False")
    return torch.device(requested)


def autocast(device):
    """bf16 autocast on CUDA (Ampere or newer keeps float32's exponent range, so no loss scaling is
    needed); a no-op context elsewhere, so CPU results are exact float32 and reproducible."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ru_maxrss_bytes():
    """This process's peak resident memory in bytes from getrusage (None on Windows)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # KiB on Linux


def memory_bytes(device):
    """Bytes of memory `device` holds in all (CPU: the RAM this process may use), or None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None  # mps shares the RAM it reports nothing reliable about; meta holds no data
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # Windows has no sysconf
        return None
    try:  # a container's cgroup (v2) may allow less than the machine has
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        return min(total, int(limit)) if limit.isdigit() else total
    except OSError:
        return total
