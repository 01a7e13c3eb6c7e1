"""A run's metrics log, one JSON object per optimizer step, and how it is cut back when the run resumes.

The trainer appends one line per step and flushes it. A run stopped between two checkpoints (Ctrl-C,
a crash, a kill) has logged steps that its checkpoint does not hold; resuming repeats them. So on
resume the log keeps only the lines up to the checkpoint's step before new lines are appended, and
every step appears once.
"""

import json
import pathlib

from lora.io.files import atomic_write


def metric_step(line):
    """The "step" of one metrics line, or None if the line is not a JSON object with an integer step."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def trim_metrics_file(path, step):
    """Keep the lines of the metrics log `path` up to `step` (rewritten atomically); nothing if it is absent.

    A crash while a line was being written is exactly when a run is resumed, so a last line that does
    not parse is dropped. A bad line anywhere else means the file is damaged: refused, not skipped.
    Raises:
        ValueError: a line other than the last is not a JSON object with an integer "step" (the
            message names the file and the line number).
    """
    metrics = pathlib.Path(path)
    if not metrics.is_file():
        return
    try:
        text = metrics.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # a torn multi-byte character can only be at the end; decode leniently
        text = metrics.read_bytes().decode("utf-8", errors="replace")
    lines = [(i, ln) for i, ln in enumerate(text.split("\n"), 1) if ln.strip()]
    steps = [metric_step(ln) for _, ln in lines]
    if steps and steps[-1] is None:
        lines, steps = lines[:-1], steps[:-1]  # half-written when the run stopped
    for (number, line), s in zip(lines, steps, strict=True):
        if s is None:
            raise ValueError(f"{metrics}: line {number} is not a JSON object with an integer 'step': {line[:80]!r}; "
                             "fix or remove the file to resume")
    kept = [ln for (_, ln), s in zip(lines, steps, strict=True) if s <= step]
    with atomic_write(metrics, "w") as f:
        f.write("".join(ln + "\n" for ln in kept))
