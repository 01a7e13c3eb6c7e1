"""`python -m minigpt.finetune --compare`: the LoRA paper's comparisons at small scale.

From one base and one seed, for the same number of steps: full fine-tuning, LoRA at several ranks,
QLoRA, DoRA and PiSSA-initialised LoRA at rank 8, and the same architecture trained from random weights. What it should show
(LoRA §7.2 and Table 6; QLoRA §4): a low rank comes close to full fine-tuning, the rank barely
matters past a few, QLoRA matches LoRA, and pretraining plus LoRA beats training from scratch.

Each run is an ordinary fine-tuning run in <out>/<name>/; <out>/compare.md holds the table and
<out>/compare.png the validation-loss curves.
"""

import dataclasses
import os
import pathlib
import time

from lora.io.files import atomic_write, write_json
from minigpt.finetune.base_model import SCRATCH
from minigpt.finetune.config import validate
from minigpt.finetune.pipeline import run_finetune
from minigpt.finetune.report import FinetuneReport

RANKS = (1, 2, 4, 8, 16, 64)
QLORA_RANK = 8


def compare_configs(cfg, ranks=RANKS):
    """[(name, FinetuneConfig)] of the comparison, all sharing cfg's base, seed, steps and data."""
    common = cfg
    root = cfg.out if cfg.out is not None else os.path.join("runs", "compare")
    runs = [("full", dataclasses.replace(common, method="full"))]
    runs += [(f"lora-r{r}", dataclasses.replace(common, method="lora", rank=r)) for r in ranks]
    runs += [(f"qlora-r{QLORA_RANK}", dataclasses.replace(common, method="qlora", rank=QLORA_RANK))]
    runs += [(f"dora-r{QLORA_RANK}", dataclasses.replace(common, method="lora", rank=QLORA_RANK, dora=True))]
    runs += [(f"pissa-r{QLORA_RANK}", dataclasses.replace(common, method="lora", rank=QLORA_RANK, init="pissa"))]
    runs += [("scratch", dataclasses.replace(common, method="full", base=SCRATCH, base_corpus=None))]
    return [(name, dataclasses.replace(c, out=os.path.join(root, name))) for name, c in runs]


def run_compare(cfg, ranks=RANKS, callback=None):
    """Run every configuration of compare_configs (all validated before the first starts).

    With cfg.resume a run whose report.json exists is read back instead of trained again.

    Returns:
        {"reports": {name: FinetuneReport}, "table": markdown str, "markdown": path, "plot": path, "seconds": float}
    Raises:
        ValueError: any run's configuration is invalid (nothing has been written then).
    """
    t0 = time.perf_counter()
    runs = [(name, validate(c)) for name, c in compare_configs(cfg, ranks)]
    root = pathlib.Path(runs[0][1].out).parent
    reports = {}
    for name, c in runs:
        done = pathlib.Path(c.out) / "report.json"
        if c.resume and done.is_file():
            reports[name] = FinetuneReport.read(done)
        else:
            reports[name] = run_finetune(c, callback=callback)
    table = markdown_table(reports)
    seconds = time.perf_counter() - t0
    with atomic_write(root / "compare.md", "w") as f:
        f.write(table + f"\n\n{len(runs)} runs of {cfg.steps} steps in {seconds:.0f} s.\n")
    save_compare_plot(reports, root / "compare.png")
    write_json(root / "compare.json", {name: r.to_dict() for name, r in reports.items()})
    return {"reports": reports, "table": table, "markdown": str(root / "compare.md"),
            "plot": str(root / "compare.png"), "seconds": seconds}


def markdown_table(reports):
    """One row per run: method, rank, trainable parameters, val loss before/after, time, throughput."""
    rows = ["| run | method | rank | trainable params | val loss before | val loss after | wall time (s) | tokens/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in reports.items():
        method = "scratch (full, random init)" if r.base == SCRATCH else r.method
        rank = r.rank if r.rank is not None else "-"
        rows.append(f"| {name} | {method} | {rank} | {r.trainable_params:,} ({r.trainable_percent:.2f}%) "
                    f"| {r.val_loss_before:.4f} | {r.val_loss_after:.4f} | {r.train_seconds:.1f} "
                    f"| {r.tokens_per_sec:,.0f} |")
    return "\n".join(rows)


def save_compare_plot(reports, path):
    """Validation loss against step, one line per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, r in reports.items():
        steps, losses = zip(*r.val_curve, strict=True)
        ax.plot(steps, losses, "--" if r.base == SCRATCH else "-", marker="o", ms=2, label=name)
    ax.set(xlabel="step", ylabel="val loss (nats/token)", title="tiny Shakespeare: full vs LoRA vs QLoRA vs scratch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
