"""minigpt.finetune.rundir.trim_metrics: a resumed run survives a half-written last metrics line, not garbage."""

import json

import pytest

from helpers import tiny_gpt
from minigpt.checkpoint import save_checkpoint
from minigpt.finetune.rundir import trim_metrics


def run_dir(tmp_path, text, step=3):
    """A run folder with a checkpoint of `step` and the metrics file `text`."""
    save_checkpoint(tmp_path, tiny_gpt(), step=step)
    (tmp_path / "metrics.jsonl").write_text(text, encoding="utf-8")
    return tmp_path


def lines(steps):
    return "".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n" for s in steps)


def kept_steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_lines_after_the_checkpoint_are_dropped(tmp_path):
    out = run_dir(tmp_path, lines(range(6)))
    assert trim_metrics(out) == 3 and kept_steps(out) == [0, 1, 2, 3]


@pytest.mark.parametrize("tail", ['{"step": 5, "lo', '{"st', "{", '"step"', '{"step": 5, "loss": 1.0}\n{"step": 6.'])
def test_half_written_last_line_is_dropped(tmp_path, tail):
    out = run_dir(tmp_path, lines(range(5)) + tail)
    assert trim_metrics(out) == 3 and kept_steps(out) == [0, 1, 2, 3]


def test_torn_multibyte_character_at_the_end_is_dropped(tmp_path):
    out = run_dir(tmp_path, "")
    (out / "metrics.jsonl").write_bytes(lines(range(3)).encode() + '{"note": "é'.encode()[:-1])
    assert trim_metrics(out) == 3 and kept_steps(out) == [0, 1, 2]


@pytest.mark.parametrize("bad", ["garbage", '{"step": "2"}', '{"step": true}', "[1, 2]", '{"loss": 1.0}'])
def test_bad_line_in_the_middle_is_refused_naming_file_and_line(tmp_path, bad):
    text = lines(range(2)) + bad + "\n" + lines(range(2, 5))
    out = run_dir(tmp_path, text)
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 3 is not a JSON object with an integer 'step'"):
        trim_metrics(out)
    assert (out / "metrics.jsonl").read_text() == text  # left as it was
