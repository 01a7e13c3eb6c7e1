"""What a fine-tuning run reports: one dataclass, written to report.json, printed, compared and plotted.

`run_finetune` returns a FinetuneReport; report.json holds `dataclasses.asdict` of it, `--compare`
reads those files back with `FinetuneReport.from_dict`, and notebook 04 reads its attributes.
"""

import dataclasses
import json
import pathlib


@dataclasses.dataclass
class FinetuneReport:
    method: str                      # full | lora | qlora
    base: str                        # the base's name (tiny, scratch, gpt2, ...) or folder
    base_path: str | None            # where the base's weights are (None for scratch)
    base_cached: bool                # the base was read from the cache rather than built now
    base_pretrain_seconds: float | None  # time spent pretraining the tiny base in this run
    device: str
    rank: int | None                 # LoRA r (None for full fine-tuning)
    alpha: float | None              # LoRA alpha (None for full fine-tuning)
    targets: str | None              # the targeted layers (None for full fine-tuning)
    steps: int
    lr: float
    batch_size: int
    block_size: int
    resumed_from_step: int           # 0 for a fresh run
    val_loss_base: float             # the base as loaded (for QLoRA: before its weights were quantised)
    val_loss_before: float           # the model about to be trained, at step 0 (QLoRA: the NF4 base)
    val_loss_after: float            # after the last step
    val_curve: list                  # [step, val loss] at every evaluation
    train_loss_final: float
    trainable_params: int
    total_params: int
    trainable_percent: float
    params_summary: str              # PEFT's "trainable params: ..." line
    peak_memory_bytes: int | None    # CUDA: max allocated; CPU: the process's peak RSS
    optimizer_state_bytes: int
    train_seconds: float
    tokens_per_sec: float
    tokens_seen: int
    adapter_bytes: int | None        # adapter/ on disk (None for full fine-tuning)
    merged_bytes: int                # merged/ on disk
    quantized_bytes_before: int | None  # QLoRA: targeted weights in float32 ...
    quantized_bytes_after: int | None   # ... and in NF4 with double quantisation
    merged_max_abs_logit_diff: float | None  # max |logits(merged) - logits(unmerged)| on 4 val windows
    prompt: str
    sample_before: str
    sample_after: str
    total_seconds: float

    @classmethod
    def from_dict(cls, d):
        """A report from report.json's dict (ValueError naming missing or unknown keys)."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = sorted(names - set(d)), sorted(set(d) - names)
        if missing or unknown:
            raise ValueError(f"not a fine-tune report: missing keys {missing}, unknown keys {unknown}")
        return cls(**d)

    @classmethod
    def read(cls, path):
        """The report in `path` (a report.json file)."""
        return cls.from_dict(json.loads(pathlib.Path(path).read_text(encoding="utf-8")))

    def to_dict(self):
        return dataclasses.asdict(self)


def _mib(n):
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def _trim(text, limit=160):
    """A sample on one short line: newlines shown as ⏎, cut at `limit` characters."""
    one = text.replace("\n", " ⏎ ")
    return one if len(one) <= limit else one[:limit].rstrip() + " …"


def format_report(r):
    """The report as a few readable lines, each saying what its numbers are."""
    how = "read from the cache" if r.base_cached else "built in this run"
    lines = [f"{r.method} fine-tune of the {r.base} base ({how}: {r.base_path})", r.params_summary]
    loss = f"val loss (nats/token): {r.val_loss_before:.4f} before fine-tuning -> {r.val_loss_after:.4f} after"
    if r.method == "qlora":
        loss += f" (the float32 base scores {r.val_loss_base:.4f}; 'before' is after NF4 quantisation)"
    lines += [
        loss,
        f"time: {r.train_seconds:.1f} s training, {r.total_seconds:.1f} s in all; {r.tokens_per_sec:,.0f} tokens/s",
        f"memory: peak {_mib(r.peak_memory_bytes)}, optimizer state {_mib(r.optimizer_state_bytes)}; "
        f"on disk: adapter {_mib(r.adapter_bytes)}, merged model {_mib(r.merged_bytes)}",
    ]
    if r.merged_max_abs_logit_diff is not None:
        lines.append(f"merged vs unmerged model: logits differ by at most {r.merged_max_abs_logit_diff:.2e}")
    if r.quantized_bytes_before is not None:
        lines.append(f"NF4 base weights: {_mib(r.quantized_bytes_before)} -> {_mib(r.quantized_bytes_after)}")
    lines += [f"sample before: {_trim(r.prompt + r.sample_before)}", f"sample after:  {_trim(r.prompt + r.sample_after)}"]
    return "\n".join(lines)
