"""The output folder of a fine-tuning run: refusing a folder of another run, atomic publishing, the loss curve.

A run folder holds OUTPUTS. Files are written with lora.io.files.atomic_write and folders with
lora.io.files.atomic_dir (built beside their final place, then renamed into it), so an interrupted run
never leaves half a file behind.
"""

import dataclasses
import json
import os
import pathlib
import shutil

from lora.io.files import atomic_write
from minigpt.checkpoint import checkpoint_path, read_checkpoint
from minigpt.cli import check_writable
from minigpt.metrics_log import trim_metrics_file

OUTPUTS = ("config.json", "metrics.jsonl", "ckpt.pt", "adapter", "merged", "loss_curve.png", "model.json",
           "report.json")
# fields that do not change a run's numbers: they may differ between a run and its resumption
FREE_FIELDS = ("out", "resume", "overwrite", "device", "compile", "progress", "cache_dir")


def _result_fields(cfg):
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in FREE_FIELDS}


def check_out_dir(cfg):
    """Refuse an --out that holds something other than this run (unless cfg.overwrite), or that could not be written."""
    out = pathlib.Path(cfg.out)
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; choose one")
    check_writable("out", cfg.out, folder=True)  # under a regular file, or in a place that cannot be written
    if not out.exists() or cfg.overwrite:
        return
    if not out.is_dir():
        raise ValueError(f"out={cfg.out!r} is a file; give a folder")
    saved_path = out / "config.json"
    if not saved_path.is_file():
        if any(out.iterdir()):
            raise ValueError(f"out={cfg.out!r} holds files that are not a fine-tuning run; "
                             "choose an empty or new folder, or pass --overwrite")
        return
    try:
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        saved = {}
    mine = _result_fields(cfg)
    # a field a run's config.json lacks is older than the run: it had the field's default value
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    diff = [f"{k}={saved.get(k, '<absent>')!r} (here {v!r})" for k, v in mine.items() if saved.get(k, "<absent>") != v]
    if diff:
        raise ValueError(f"out={cfg.out!r} holds a run of another configuration: {', '.join(diff)}; "
                         "choose another --out, or pass --overwrite to replace it")


def clear_outputs(out):
    """Remove a previous run's outputs from `out` (other files stay)."""
    for name in OUTPUTS:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def trim_metrics(out):
    """On resume: keep the metric lines of out/metrics.jsonl up to the checkpoint's step, so none is
    written twice (minigpt.metrics_log.trim_metrics_file); returns that step, 0 without a checkpoint.

    Raises:
        ValueError: a line other than the last is not a JSON object with an integer "step".
    """
    step = read_checkpoint(out)["step"] if os.path.isfile(checkpoint_path(out)) else 0
    trim_metrics_file(out / "metrics.jsonl", step)
    return step


def save_loss_curve(train_losses, val_losses, path, title):
    """Training loss per step and validation loss per evaluation, as a PNG (matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(1, len(train_losses) + 1), train_losses, lw=0.8, alpha=0.6, label="train")
    if val_losses:
        steps, losses = zip(*val_losses, strict=True)
        ax.plot(steps, losses, "o-", ms=3, label="val")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
