"""Benchmark section 7: the tiny model's training step on an idle machine and beside one busy process.

A student's laptop always runs something else. This section starts one competing process of its own
(a pure-Python spin loop, bounded in time and stopped in a `finally`) and times section 1's tiny
full fine-tuning step without it and beside it, under several thread settings:

    torch defaults          every usable core, OpenMP's default wait (spin 300,000 times, then sleep)
    ACTIVE                  every usable core, OMP_WAIT_POLICY=ACTIVE (idle workers spin without end)
    PASSIVE, all cores      every usable core, OMP_WAIT_POLICY=PASSIVE (idle workers sleep at once)
    short spin, all cores   every usable core, minigpt's wait policy alone (minigpt.threads)
    minigpt's choice        minigpt's wait policy and one thread per core free at the start

OpenMP reads its wait settings when torch loads it, so each setting runs in a fresh `python` started
with its own environment; the first three import torch first, the last two import minigpt first, as
`python -m minigpt.<command>` does. Each setting runs ROUNDS times, in turn with the others, and its
samples are pooled. This section sets its own thread counts: --threads is not used.
"""

import json
import os
import subprocess
import sys
import time

from minigpt.bench.harness import make_section, make_target, ms, spread_ms, summarize

CHILD = ("import os\nimport {first}\n"
         "wait = {{v: os.environ.get(v) for v in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}}  # as OpenMP read them\n"
         "import json, sys\nfrom minigpt.bench.busy import busy_step_job\n"
         "print('RESULT ' + json.dumps(busy_step_job(**json.loads(sys.argv[1]), wait=wait)))")
SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
CONFIGS = (  # (label, OMP_WAIT_POLICY or None for unset, first import, threads: "default" or "fitted")
    ("torch defaults", None, "torch", "default"),
    ("ACTIVE", "ACTIVE", "torch", "default"),
    ("PASSIVE, all cores", "PASSIVE", "torch", "default"),
    ("short spin, all cores", None, "minigpt", "default"),
    ("minigpt's choice", None, "minigpt", "fitted"),
)
ROUNDS = 3  # each setting is run this many times, in turn with the others, and its samples pooled
OURS = CONFIGS[-1][0]


def busy_step_job(preset, batch, seq_len, threads, warmup, repeats, max_seconds, seed, wait):
    """Child job: section 1's full training step, timed `repeats` times or until max_seconds have passed;
    `wait` holds OMP_WAIT_POLICY and GOMP_SPINCOUNT as they were when torch loaded OpenMP."""
    import torch

    from minigpt.bench.train_step import build_model, make_optimizer, make_step, random_batch
    from minigpt.threads import choose_threads, wait_policy

    model = build_model(preset, "full", seed)
    choice = choose_threads() if threads == "fitted" else None
    if choice is not None:
        torch.set_num_threads(choice.threads)
    x, y = random_batch(model.config.vocab_size, batch, seq_len, seed)
    step = make_step(model, make_optimizer(model), x, y)
    for _ in range(warmup):
        step()
    samples, end = [], time.perf_counter() + max_seconds
    while len(samples) < repeats and (len(samples) < 3 or time.perf_counter() < end):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    return dict(threads=torch.get_num_threads(), wait_policy=wait_policy({k: v for k, v in wait.items() if v}),
                samples=samples, step=summarize(samples), choice=None if choice is None else choice.describe())


def run_fresh(first, policy, kwargs, timeout, env_extra=None):
    """busy_step_job in a new interpreter whose environment has OMP_WAIT_POLICY=policy (None: unset),
    none of our own OpenMP settings, and `env_extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    env.update(env_extra or {})
    try:
        done = subprocess.run([sys.executable, "-c", CHILD.format(first=first), json.dumps(kwargs)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(status="failed", error=f"timed out after {timeout} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return dict(status="failed", error=(done.stderr.strip().splitlines() or ["no result"])[-1])
    return dict(json.loads(lines[-1][len("RESULT "):]), status="ok")


def start_competitor(seconds):
    """One busy process: a Python loop that spins for at most `seconds`."""
    return subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds)])


def stop_competitor(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _measure_round(cfg, kwargs):
    """{(label, "idle" | "busy"): result}: every setting idle, then every setting beside the competitor."""
    results = {}
    for label, policy, first, threads in CONFIGS:
        results[label, "idle"] = run_fresh(first, policy, dict(kwargs, threads=threads), cfg.timeout)
    competitor = start_competitor(seconds=len(CONFIGS) * cfg.timeout)
    try:
        time.sleep(0.5)  # let it reach the scheduler's steady state
        for label, policy, first, threads in CONFIGS:
            results[label, "busy"] = run_fresh(first, policy, dict(kwargs, threads=threads), cfg.timeout)
    finally:
        stop_competitor(competitor)
    return results


def _pool(runs):
    """One result from a setting's runs in several rounds: their samples pooled, or the first failure."""
    failed = [r for r in runs if r.get("status") != "ok"]
    if failed:
        return failed[0]
    samples = [x for r in runs for x in r["samples"]]
    return dict(runs[-1], samples=samples, step=summarize(samples), rounds=len(runs))


def _measure(cfg, kwargs, rounds):
    """Every setting, idle and busy, in `rounds` rounds taken in turn: a machine whose speed drifts
    (other tenants, clock changes) then slows every setting alike instead of the ones measured last."""
    per_round = [_measure_round(cfg, kwargs) for _ in range(rounds)]
    return {key: _pool([r[key] for r in per_round]) for key in per_round[0]}


def _median(result):
    return result["step"]["median"] if result.get("status") == "ok" else None


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def run_busy(cfg):
    """Section 7: tiny training step, idle vs beside one busy process, under five thread settings."""
    preset, batch, seq_len = ("test", 2, 16) if cfg.quick else ("tiny", 8, 128)
    kwargs = dict(preset=preset, batch=batch, seq_len=seq_len, warmup=cfg.warmup, repeats=cfg.repeats,
                  max_seconds=2 if cfg.quick else 15, seed=cfg.seed)
    rounds = 1 if cfg.quick else ROUNDS
    results = _measure(cfg, kwargs, rounds)
    rows = []
    for label, *_ in CONFIGS:
        idle, busy = results[label, "idle"], results[label, "busy"]
        cells = []
        for r in (idle, busy):
            cells += ([r["threads"], ms(r["step"]["median"]), spread_ms(r["step"])] if r.get("status") == "ok"
                      else [None, f"failed: {r.get('error')}", None])
        slow = _ratio(_median(busy), _median(idle))
        rows.append([label, idle.get("wait_policy")] + cells + [None if slow is None else f"{slow:.2f}"])
    ours_slow = _ratio(_median(results[OURS, "busy"]), _median(results[OURS, "idle"]))
    idle_vs_before = _ratio(_median(results[OURS, "idle"]), _median(results[CONFIGS[0][0], "idle"]))
    targets = [make_target(f"{preset}: busy step / idle step, minigpt's choice", ours_slow, "<= 1.5",
                           ours_slow is not None and ours_slow <= 1.5, digits=2),
               make_target(f"{preset}: idle step, minigpt's choice / torch defaults", idle_vs_before,
                           "<= 1.1 (no slower, within noise)", idle_vs_before is not None and idle_vs_before <= 1.1,
                           digits=2)]
    headers = ["setting", "wait policy", "threads idle", "idle step ms", "idle IQR ms", "threads busy",
               "busy step ms", "busy IQR ms", "busy / idle"]
    choice = results[OURS, "idle"].get("choice")
    notes = [f"model {preset} (B={batch}, T={seq_len}), full fine-tuning step as in section 1; each setting in a "
             f"fresh python, {rounds} time(s) in turn with the others, samples pooled; busy: beside one spinning "
             f"Python process started by the benchmark. "
             f"minigpt's choice here: {choice}.", f"load average before the section: {os.getloadavg()}"
             if hasattr(os, "getloadavg") else "no load average on this OS"]
    return make_section("Busy machine: training step idle vs beside one busy process",
                        [dict(headers=headers, rows=rows)], targets, notes,
                        [dict(setting=k[0], mode=k[1], **v) for k, v in results.items()])
