"""The output folder of a fine-tuning run: refusing a folder of another run, atomic publishing, the loss curve.

A run folder holds OUTPUTS. Files are written with lora.files.atomic_write and folders with
lora.files.atomic_dir (built beside their final place, then renamed into it), so an interrupted run
never leaves half a file behind.
"""

import dataclasses
import json
import os
import pathlib
import shutil

from lora.files import atomic_write
from minigpt.checkpoint import checkpoint_path, read_checkpoint
from minigpt.cli import check_writable

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
    diff = [f"{k}={saved.get(k, '<absent>')!r} (here {v!r})" for k, v in mine.items() if saved.get(k, "<absent>") != v]
    if diff:
        raise ValueError(f"out={cfg.out!r} holds a run of another configuration: {', '.join(diff)}; "
                         "choose another --out, or pass --overwrite to replace it")


def clear_outputs(out):
    """Remove a previous run's outputs from `out` (other files stay)."""
    for name in OUTPUTS:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _metric_step(line):
    """The "step" of one metrics line, or None if the line is not a JSON object with an integer step."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def trim_metrics(out):
    """On resume: keep the metric lines up to the checkpoint's step, so none is written twice.

    A crash while a line was being written is exactly when a run is resumed, so a last line that does
    not parse is dropped. A bad line anywhere else means the file is damaged: refused, not skipped.
    Raises:
        ValueError: a line other than the last is not a JSON object with an integer "step" (the
            message names the file and the line number).
    """
    metrics = out / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    step = read_checkpoint(out)["step"] if os.path.isfile(checkpoint_path(out)) else 0
    try:
        text = metrics.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # a torn multi-byte character can only be at the end; decode leniently
        text = metrics.read_bytes().decode("utf-8", errors="replace")
    lines = [(i, ln) for i, ln in enumerate(text.split("\n"), 1) if ln.strip()]
    steps = [_metric_step(ln) for _, ln in lines]
    if steps and steps[-1] is None:
        lines, steps = lines[:-1], steps[:-1]  # half-written when the run stopped
    for (number, line), s in zip(lines, steps, strict=True):
        if s is None:
            raise ValueError(f"{metrics}: line {number} is not a JSON object with an integer 'step': {line[:80]!r}; "
                             "fix or remove the file to resume")
    kept = [ln for (_, ln), s in zip(lines, steps, strict=True) if s <= step]
    with atomic_write(metrics, "w") as f:
        f.write("".join(ln + "\n" for ln in kept))
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
