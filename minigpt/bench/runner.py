"""The benchmark runner: its configuration, the sections, machine facts and markdown rendering.

Benchmarks: what LoRA and QLoRA save, measured on your own machine.

    python -m minigpt.bench                      # all seven sections, several minutes on a laptop CPU
    python -m minigpt.bench --quick              # tiny sizes, few repeats: checks that everything runs
    python -m minigpt.bench --sections 1,4 --threads 4 --out bench.json

Sections (each compares variants side by side in one run and reports ratios and absolute figures):
    1 training step: full fine-tuning vs LoRA vs QLoRA (time, tokens/s, gradient/optimizer/weight bytes, peak memory)
    2 inference: base model vs LoRA unmerged vs LoRA merged (forward latency)
    3 one LoRALinear vs one nn.Linear, forward and forward+backward, over (d_in, d_out, rank)
    4 NF4 quantise/dequantise throughput and reconstruction error, with and without double quantisation
    5 MiniGPT training throughput on nanoGPT's CPU configuration, eager and torch.compile
    6 generation tokens/s with the KV cache vs re-running the context, tiny and GPT-2-shaped, batch 1 and 8
    7 the tiny training step idle vs beside one busy process it starts, under several thread settings

Prints markdown tables to stdout and writes every figure to a JSON file. Timings are medians over many
repeats after warm-up, with the spread; the thread count is pinned and printed. Nothing here asserts a speed.
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from lora.checks import check_int
from lora.io.files import atomic_write
from minigpt.bench.harness import load_average, pinned_threads
from minigpt.cli import check_writable
from minigpt.threads import clamp_to_cores, wait_policy
from minigpt.trainer import check_seed

SECTIONS = {
    1: ("train_step", "minigpt.bench.train_step:run_train_step"),
    2: ("inference", "minigpt.bench.inference:run_inference"),
    3: ("lora_layer", "minigpt.bench.inference:run_lora_layer"),
    4: ("nf4", "minigpt.bench.nf4:run_nf4"),
    5: ("throughput", "minigpt.bench.throughput:run_throughput"),
    6: ("generation", "minigpt.bench.generation:run_generation"),
    7: ("busy", "minigpt.bench.busy:run_busy"),
}


def _default_threads():
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


@dataclass
class BenchConfig:
    sections: tuple = tuple(SECTIONS)             # which sections to run, by number
    quick: bool = False                           # tiny sizes and few repeats: a smoke test, not a measurement
    threads: int = field(default_factory=_default_threads)  # torch threads here and in every subprocess (clamped to the cores)
    warmup: int | None = None                     # untimed calls before timing; None: 1 with --quick, else 3
    repeats: int | None = None                    # timed repeats (medians); None: 3 with --quick, else 30
    out: str = "bench.json"                       # JSON file with every figure
    seed: int = 0                                 # model init and batch contents
    timeout: int = 1200                           # seconds allowed to each subprocess

    def __post_init__(self):
        self.sections = tuple(sorted(set(self.sections)))
        bad = [s for s in self.sections if s not in SECTIONS]
        if not self.sections or bad:
            raise ValueError(f"sections={list(self.sections)}: choose from {sorted(SECTIONS)}")
        self.threads = clamp_to_cores(check_int("threads", self.threads), "threads")[0]
        if self.warmup is None:
            self.warmup = 1 if self.quick else 3
        if self.repeats is None:
            self.repeats = 3 if self.quick else 30
        check_int("warmup", self.warmup, least=0)
        check_int("repeats", self.repeats)
        check_seed("seed", self.seed)
        check_int("timeout", self.timeout)


def cpu_name():
    """The CPU's model name as lscpu prints it (falls back to /proc/cpuinfo, then platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(cfg):
    return dict(cpu=cpu_name(), logical_cpus=os.cpu_count(), threads=torch.get_num_threads(), wait_policy=wait_policy(),
                torch=torch.__version__, python=platform.python_version(), platform=platform.platform(),
                date=datetime.datetime.now().isoformat(timespec="seconds"), load_average_before=load_average(),
                command="python -m minigpt.bench " + " ".join(sys.argv[1:]) if sys.argv[1:] else "python -m minigpt.bench",
                quick=cfg.quick, warmup=cfg.warmup, repeats=cfg.repeats)


def busy_warning(load, threads, cpus):
    """A warning when other processes already use the cores the benchmark's threads need, else None.

    Timings then measure the scheduler more than the code: with more runnable threads than cores,
    OpenMP threads wait for each other at every parallel region, and single steps stretch by whole
    scheduler time slices.
    """
    if not load or not cpus or load[0] + threads <= cpus + 0.5:
        return None
    return (f"load average {load[0]} with {threads} benchmark thread(s) on {cpus} CPUs: other processes are "
            "running, so timings will be noisy (wait for a quiet machine, or use fewer --threads)")


def _cell(value):
    return "" if value is None else str(value).replace("|", "/").replace("\n", " ")


def render_table(headers, rows):
    """A GitHub-markdown table; columns after the first are right-aligned."""
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_section(number, section):
    """Markdown for one section: title, its tables, targets checked and notes."""
    parts = [f"### {number}. {section['title']}"]
    for table in section["tables"]:
        if table.get("caption"):
            parts.append(table["caption"])
        parts.append(render_table(table["headers"], table["rows"]))
    if section["targets"]:
        parts.append("\n".join(
            f"- {t['name']}: {t['value_text']} (target {t['target']}): "
            + {True: "**met**", False: "**missed**", None: "not measured"}[t["met"]]
            for t in section["targets"]))
    if section["notes"]:
        parts.append("\n".join(f"- {n}" for n in section["notes"]))
    return "\n\n".join(parts)


def _import(path):
    module_name, _, func_name = path.partition(":")
    module = __import__(module_name, fromlist=[func_name])
    return getattr(module, func_name)


def run(cfg, emit=print):
    """Run the chosen sections; emit each rendered section as it finishes; return the results dict.

    The thread count is pinned for the run and restored afterwards. cfg.out is checked first: a path
    that could not be written is refused before any section runs, not after the last.
    """
    check_writable("out", cfg.out, folder=False)
    with pinned_threads(cfg.threads):
        meta = machine_info(cfg)
        emit(f"# minigpt benchmarks\n\nCPU: {meta['cpu']} | threads: {meta['threads']} (torch.set_num_threads) | "
             f"OpenMP wait policy: {meta['wait_policy']} | torch {meta['torch']} | load average (1, 5, 15 min) before: {meta['load_average_before']}\n")
        busy = busy_warning(meta["load_average_before"], cfg.threads, meta["logical_cpus"])
        if busy:
            emit(f"WARNING: {busy}\n")
        results = dict(meta=meta, config=asdict(cfg), sections={})
        for number in cfg.sections:
            key, path = SECTIONS[number]
            start = time.perf_counter()
            section = _import(path)(cfg)
            section["seconds"] = round(time.perf_counter() - start, 1)
            results["sections"][key] = section
            emit(render_section(number, section) + "\n")
    meta["load_average_after"] = load_average()
    emit(f"load average (1, 5, 15 min) after: {meta['load_average_after']}")
    with atomic_write(cfg.out, "w") as f:
        json.dump(results, f, indent=1)
    return results
