"""Every `python -m` command under careless and hostile input, grouped by entry point.

The rule (minigpt/cli.py): --help works, an unknown flag exits 2, every argument and output path is
checked before any work, an expected error is one line `error: ...` with exit status 2 and no
traceback, and Ctrl-C in the middle of a write exits 130 leaving every file whole. "Before any work"
is checked by making the first step of the work fail the test if it is reached.
"""

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import minigpt.checkpoint
import minigpt.finetune.estimate
import minigpt.finetune.pipeline
from lora.io.files import atomic_write
from minigpt import sample as sample_cli
from minigpt import train as train_cli
from minigpt.bench import __main__ as bench_cli
from minigpt.bench import runner
from minigpt.budget import __main__ as budget_cli
from minigpt.checkpoint import read_checkpoint
from minigpt.finetune import __main__ as finetune_cli
from minigpt.threads import usable_cores

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20
TRAIN = ["--preset", "test", "--steps", "4", "--lr-decay-steps", "4", "--batch-size", "4", "--block-size", "16",
         "--eval-batches", "1", "--device", "cpu", "--threads", "1", "--no-progress"]


def run_cli(main, argv, capsys):
    """(exit status, stdout, stderr) of main(argv) run in this process; status 0 when it returns."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def contents(folder):
    """{relative path: bytes} of every file under `folder` (hidden temporary ones included)."""
    folder = pathlib.Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def not_reached(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} ran before the arguments were checked")
    return fail


class InterruptingWrites:
    """A file that takes `allowed` bytes, then receives a real SIGINT in the middle of the next write."""

    def __init__(self, f, allowed):
        self.f, self.allowed = f, allowed

    def write(self, data):
        if self.allowed <= 0:
            signal.raise_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt right here
        self.allowed -= len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


class FullDisk(InterruptingWrites):
    """A file that takes `allowed` bytes, then fails the way a full disk does."""

    def write(self, data):
        if self.allowed <= 0:
            raise OSError(28, "No space left on device")
        return super().write(data)


pytestmark = pytest.mark.usefixtures("python_sigint_handler")  # conftest.py: Ctrl-C raises KeyboardInterrupt


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder of `python -m minigpt.train` (4 steps on a small text file) and that text file."""
    root = tmp_path_factory.mktemp("commands")
    (root / "input.txt").write_text(TEXT)
    train_cli.main([*TRAIN, "--data", str(root / "input.txt"), "--out", str(root / "run")])
    return root / "run", root / "input.txt"


@pytest.fixture
def a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("a regular file")
    return tmp_path / "notes.txt"


# --- python -m minigpt.sample ---------------------------------------------------------------------

@pytest.mark.parametrize("argv, named", [
    (["--threads", "0"], "threads=0"),
    (["--max-new-tokens", "-1"], "max_new_tokens=-1"),
    (["--temperature", "-1"], "temperature=-1.0"),
    (["--temperature", "1e-40"], "temperature=1e-40: use 0 for greedy"),
    (["--temperature", "nan"], "temperature=nan"),
    (["--top-k", "-5"], "top_k=-5"),
    (["--prompt", ""], "prompt is empty"),
    (["--num-samples", "-1"], "num_samples=-1"),
    (["--num-samples", "0"], "num_samples=0"),
    (["--seed", "-1"], "seed=-1"),
    (["--seed", str(2**64)], f"seed={2**64}"),
])
def test_sample_refuses_a_bad_setting_in_one_line_before_loading_the_model(monkeypatch, capsys, argv, named):
    monkeypatch.setattr(sample_cli, "load_model", not_reached("loading the model"))
    code, out, err = run_cli(sample_cli.main, ["some-run", *argv], capsys)
    assert_one_line_error(code, err, named)
    assert out == ""


def test_sample_refuses_a_bad_omp_num_threads_before_loading_the_model(monkeypatch, capsys):
    monkeypatch.setattr(sample_cli, "load_model", not_reached("loading the model"))
    monkeypatch.setenv("OMP_NUM_THREADS", "abc")
    assert_one_line_error(*run_cli(sample_cli.main, ["some-run"], capsys)[::2], "OMP_NUM_THREADS='abc'")


def test_sample_from_a_missing_source_or_with_an_unknown_character_is_one_line(trained, tmp_path, capsys):
    code, _, err = run_cli(sample_cli.main, [str(tmp_path / "nothing-here")], capsys)
    assert_one_line_error(code, err, "nothing-here")
    code, out, err = run_cli(sample_cli.main, [str(trained[0]), "--prompt", "Zebra€", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "'Z' is not in")  # and no "threads:" line before it
    assert out == ""


def test_sample_clamps_a_huge_thread_count_before_torch_sees_it(trained, monkeypatch, capsys):
    counts, real = [], torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (counts.append(n), real(n))[1])
    argv = [str(trained[0]), "--max-new-tokens", "3", "--device", "cpu", "--threads", "100000"]
    code, out, err = run_cli(sample_cli.main, argv, capsys)
    assert code == 0 and out.startswith("\n")  # the default prompt is a newline
    assert f"requested 100000, clamped to the {usable_cores()} usable cores" in err
    assert counts and max(counts) <= usable_cores()


def test_sample_help_and_unknown_flags(capsys):
    code, out, _ = run_cli(sample_cli.main, ["--help"], capsys)
    assert code == 0 and out.startswith("usage: python -m minigpt.sample")
    code, _, err = run_cli(sample_cli.main, ["run", "--bogus"], capsys)
    assert code == 2 and "unrecognized arguments: --bogus" in err


# --- python -m minigpt.train ----------------------------------------------------------------------

@pytest.mark.parametrize("argv, named", [
    (["--threads", "0"], "TrainConfig.threads=0"),
    (["--steps", "-1"], "TrainConfig.steps=-1"),
    (["--lr", "nan"], "TrainConfig.lr=nan"),
    (["--seed", str(2**63)], f"TrainConfig.seed={2**63}"),
    (["--n-layer", "0"], "GPTConfig.n_layer=0"),
    (["--n-embd", "1000000", "--n-head", "1"], "parameters need 96,000,432,000,000 bytes"),
    (["--out", "{file}"], "is a file; give a folder"),
    (["--out", "{file}/run"], "is a file, so nothing can be written under it"),
    (["--out", "{file}/ckpt.pt"], "is a file, so nothing can be written under it"),
    (["--metrics-path", "{file}/m.jsonl"], "metrics_path="),
    (["--metrics-path", "{dir}"], "is a folder; give a file name"),
    pytest.param(["--device", "cuda"], "device='cuda' was requested",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there")),
])
def test_train_refuses_a_bad_setting_in_one_line_before_reading_the_text(monkeypatch, capsys, a_file, argv, named):
    monkeypatch.setattr(train_cli, "load_tiny_shakespeare", not_reached("reading the text"))
    argv = [a.format(file=a_file, dir=a_file.parent) for a in argv]
    code, out, err = run_cli(train_cli.main, [*TRAIN, "--out", str(a_file.parent / "run"), *argv], capsys)
    assert_one_line_error(code, err, named)
    assert out == "" and not (a_file.parent / "run").exists()


def test_train_refuses_a_bad_omp_num_threads_before_reading_the_text(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(train_cli, "load_tiny_shakespeare", not_reached("reading the text"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for bad in ("abc", "0", "-2", "1.5"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        argv = [*TRAIN[:-3], "--no-progress", "--out", str(tmp_path / "run")]  # no --threads: the variable counts
        assert_one_line_error(*run_cli(train_cli.main, argv, capsys)[::2], f"OMP_NUM_THREADS={bad!r}")


@pytest.mark.parametrize("content, named", [(b"\xff\xfe\x00 not text", "not UTF-8 text (byte 0"),
                                            (b"", "needs a non-empty text"), (b"abc", "data has 1 tokens")])
def test_train_on_a_file_that_is_not_usable_text_is_one_line(tmp_path, capsys, content, named):
    (tmp_path / "data.bin").write_bytes(content)
    argv = [*TRAIN, "--data", str(tmp_path / "data.bin"), "--out", str(tmp_path / "run")]
    code, _, err = run_cli(train_cli.main, argv, capsys)
    assert_one_line_error(code, err, named)
    assert not (tmp_path / "run").exists()


def _copy_run(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    return run, [*TRAIN[:3], "6", *TRAIN[4:], "--data", str(trained[1]), "--out", str(run), "--resume"]  # 6 steps


def _flip_a_bit_in_a_weight(data, run):
    weight = read_checkpoint(run)["model"]["transformer.h.0.ln_1.weight"]  # 16 contiguous floats
    at = data.find(weight.numpy().tobytes())
    assert at > 0
    return data[:at + 5] + bytes([data[at + 5] ^ 0x01]) + data[at + 6:]


@pytest.mark.parametrize("damage, named", [
    ("truncated", "not a readable checkpoint (truncated or corrupted)"),
    ("bit flipped", "checksum mismatch, the file is corrupted"),
    ("not a checkpoint", "not a readable checkpoint"),
])
def test_train_resume_from_a_damaged_checkpoint_is_one_line_and_leaves_it(trained, tmp_path, capsys, damage, named):
    run, argv = _copy_run(trained, tmp_path)
    ckpt, data = run / "ckpt.pt", (run / "ckpt.pt").read_bytes()
    ckpt.write_bytes({"truncated": data[: len(data) // 2], "bit flipped": _flip_a_bit_in_a_weight(data, run),
                      "not a checkpoint": b"my notes, saved over ckpt.pt by mistake\n"}[damage])
    before = contents(run)
    code, _, err = run_cli(train_cli.main, argv, capsys)
    assert_one_line_error(code, err, str(ckpt), named)
    assert contents(run) == before


def test_train_with_a_full_disk_at_the_checkpoint_keeps_the_previous_one(trained, tmp_path, monkeypatch, capsys):
    run, argv = _copy_run(trained, tmp_path)
    before = contents(run)
    real_init = minigpt.checkpoint._RecordingFile.__init__

    def on_a_full_disk(self, f):
        real_init(self, f)
        self.raw = FullDisk(self.raw, allowed=4096)

    monkeypatch.setattr(minigpt.checkpoint._RecordingFile, "__init__", on_a_full_disk)
    code, _, err = run_cli(train_cli.main, argv, capsys)
    assert_one_line_error(code, err, str(run / "ckpt.pt"), "No space left on device", "the previous one is kept")
    assert contents(run) == before  # no half-written temporary file either


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_train_whose_checkpoint_cannot_be_written_says_so_in_one_line(trained, tmp_path):
    """The real thing, in a process of its own: the OS refuses the write past a file-size limit."""
    run, argv = _copy_run(trained, tmp_path)
    before = contents(run)
    code = ("import resource, runpy, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # a full disk sends no signal either
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
            f"sys.argv = ['minigpt.train', *{argv!r}]\n"
            "runpy.run_module('minigpt.train', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "File too large; the checkpoint was not written, the previous one is kept" in done.stderr
    assert contents(run) == before


def test_train_interrupted_while_checkpointing_keeps_the_previous_one_and_resumes(trained, tmp_path, monkeypatch,
                                                                                 capsys):
    run, argv = _copy_run(trained, tmp_path)
    before = contents(run)
    real_init = minigpt.checkpoint._RecordingFile.__init__

    def interrupted(self, f):
        real_init(self, f)
        self.raw = InterruptingWrites(self.raw, allowed=4096)

    monkeypatch.setattr(minigpt.checkpoint._RecordingFile, "__init__", interrupted)
    code, _, err = run_cli(train_cli.main, argv, capsys)
    assert code == 130 and err.startswith("interrupted: ") and err.count("\n") == 1, err
    assert contents(run) == before
    monkeypatch.undo()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert run_cli(train_cli.main, argv, capsys)[0] == 0  # the documented way on: --resume
    assert read_checkpoint(run)["step"] == 6


def test_train_clamps_a_huge_thread_count_before_torch_sees_it(trained, tmp_path, monkeypatch, capsys):
    counts, real = [], torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (counts.append(n), real(n))[1])
    argv = [*TRAIN[:3], "1", *TRAIN[4:-3], "--no-progress", "--threads", "100000", "--data", str(trained[1]),
            "--out", str(tmp_path / "run")]
    code, out, _ = run_cli(train_cli.main, argv, capsys)
    assert code == 0 and f"requested 100000, clamped to the {usable_cores()} usable cores" in out
    assert counts and max(counts) <= usable_cores()


def test_train_help_and_unknown_flags(capsys):
    code, out, _ = run_cli(train_cli.main, ["--help"], capsys)
    assert code == 0 and out.startswith("usage: python -m minigpt.train")
    code, _, err = run_cli(train_cli.main, ["--bogus"], capsys)
    assert code == 2 and "unrecognized arguments: --bogus" in err


# --- python -m minigpt.bench ----------------------------------------------------------------------

@pytest.mark.parametrize("argv, named", [
    (["--sections", "9"], "sections=[9]"),
    (["--sections", "one"], "--sections='one'"),
    (["--threads", "0"], "threads=0"),
    (["--repeats", "0"], "repeats=0"),
    (["--warmup", "-1"], "warmup=-1"),
    (["--seed", "-1"], "seed=-1"),
    (["--timeout", "0"], "timeout=0"),
    (["--out", "{file}/bench.json"], "is a file, so nothing can be written under it"),
    (["--out", "{dir}"], "is a folder; give a file name"),
])
def test_bench_refuses_a_bad_setting_in_one_line_before_any_section(monkeypatch, capsys, a_file, argv, named):
    monkeypatch.setattr(runner, "_import", not_reached("a benchmark section"))
    argv = [a.format(file=a_file, dir=a_file.parent) for a in argv]
    code, out, err = run_cli(bench_cli.main, ["--quick", *argv], capsys)
    assert_one_line_error(code, err, named)
    assert out == ""


def test_bench_clamps_a_huge_thread_count_with_a_note(monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(bench_cli, "run", lambda cfg, emit: ran.append(cfg))
    code, _, err = run_cli(bench_cli.main, ["--quick", "--threads", "100000"], capsys)
    assert code == 0 and ran[0].threads == usable_cores()
    assert err == f"note: --threads 100000 is more than the {usable_cores()} usable cores; using {usable_cores()}\n"


def test_bench_interrupted_while_writing_its_json_keeps_the_previous_file(monkeypatch, capsys, tmp_path):
    out = tmp_path / "bench.json"
    out.write_text('{"previous": "results"}\n')
    section = dict(title="a stand-in section", tables=[], targets=[], notes=[])
    monkeypatch.setattr(runner, "_import", lambda path: lambda cfg: dict(section))
    real = runner.atomic_write

    @contextlib.contextmanager
    def interrupted_write(path, mode="wb"):
        with real(path, mode) as f:
            yield InterruptingWrites(f, allowed=20)

    monkeypatch.setattr(runner, "atomic_write", interrupted_write)
    code, _, err = run_cli(bench_cli.main, ["--quick", "--sections", "4", "--threads", "1", "--out", str(out)], capsys)
    assert code == 130 and err.startswith("interrupted: ") and err.count("\n") == 1, err
    assert contents(tmp_path) == {"bench.json": b'{"previous": "results"}\n'}


def test_bench_help_and_unknown_flags(capsys):
    code, out, _ = run_cli(bench_cli.main, ["--help"], capsys)
    assert code == 0 and out.startswith("usage: python -m minigpt.bench")
    code, _, err = run_cli(bench_cli.main, ["--bogus"], capsys)
    assert code == 2 and "unrecognized arguments: --bogus" in err


# --- python -m minigpt.finetune -------------------------------------------------------------------

@pytest.fixture(scope="module")
def finetune_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-commands")
    (root / "corpus.txt").write_text("the king and queen of rome shall speak to thee\n" * 60, encoding="utf-8")
    (root / "play.txt").write_text("ROMEO: GOOD NIGHT MY LORD, WHAT SAY YOU\n" * 150, encoding="utf-8")
    return root


def finetune_argv(files, out, *extra):
    return ["--base-corpus", str(files / "corpus.txt"), "--base-preset", "test", "--base-steps", "20",
            "--data", str(files / "play.txt"), "--cache-dir", str(files / "cache"), "--out", str(out),
            "--rank", "2", "--steps", "6", "--batch-size", "4", "--block-size", "16", "--eval-interval", "3",
            "--eval-batches", "1", "--sample-tokens", "4", "--prompt", "THE ", "--device", "cpu", "--no-progress",
            "--threads", "1", *extra]


@pytest.mark.parametrize("argv, named", [
    (["--threads", "0"], "threads=0"),
    (["--seed", "-1"], "seed=-1"),
    (["--prompt", ""], "prompt=''"),
    (["--rank", "0"], "rank=0"),
    (["--data", "{dir}/missing.txt"], "missing.txt'"),
    (["--out", "{file}"], "is a file; give a folder"),
    (["--out", "{file}/run"], "is a file, so nothing can be written under it"),
    (["--out", "{file}", "--overwrite"], "is a file; give a folder"),
    (["--cache-dir", "{file}/cache"], "cache_dir="),
    (["--impl", "{dir}/no-such-folder"], "is not a folder"),
    (["--impl", "solutions", "--method", "full"], "method='full' trains every weight"),
    (["--impl", "solutions", "--compare"], "drop --impl"),
])
def test_finetune_refuses_a_bad_setting_in_one_line_before_any_work(monkeypatch, capsys, finetune_files, a_file,
                                                                   argv, named):
    monkeypatch.setattr(minigpt.finetune.estimate, "calibrate", not_reached("the time estimate"))
    monkeypatch.setattr(finetune_cli, "run_finetune", not_reached("the fine-tune"))
    argv = finetune_argv(finetune_files, a_file.parent / "run", *[a.format(file=a_file, dir=a_file.parent) for a in argv])
    code, out, err = run_cli(finetune_cli.main, argv, capsys)
    assert_one_line_error(code, err, named)
    assert out == "" and not (a_file.parent / "run").exists()


def test_finetune_refuses_a_bad_omp_num_threads_before_any_work(monkeypatch, capsys, finetune_files, tmp_path):
    monkeypatch.setattr(minigpt.finetune.estimate, "calibrate", not_reached("the time estimate"))
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    argv = finetune_argv(finetune_files, tmp_path / "run")[:-2]  # no --threads: the variable counts
    assert_one_line_error(*run_cli(finetune_cli.main, argv, capsys)[::2], "OMP_NUM_THREADS='many'")


def _interrupt_checkpoint(monkeypatch):
    real_init = minigpt.checkpoint._RecordingFile.__init__

    def interrupted(self, f):
        real_init(self, f)
        self.raw = InterruptingWrites(self.raw, allowed=2048)

    monkeypatch.setattr(minigpt.checkpoint._RecordingFile, "__init__", interrupted)


def _interrupt_merged(monkeypatch):
    real = minigpt.finetune.pipeline.save_pretrained

    def interrupted(model, directory):
        real(model, directory)  # merged/ is complete in its temporary folder, not yet renamed into place
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(minigpt.finetune.pipeline, "save_pretrained", interrupted)


def _interrupt_report(monkeypatch):
    real = minigpt.finetune.pipeline.write_json

    def interrupted(path, obj):
        if pathlib.Path(path).name != "report.json":
            return real(path, obj)
        with atomic_write(path, "w") as f:  # the report's own way of writing, stopped half-way
            InterruptingWrites(f, allowed=10).write('{"method": "lora", "half": "of a report"')
            InterruptingWrites(f, allowed=0).write("}")

    monkeypatch.setattr(minigpt.finetune.pipeline, "write_json", interrupted)


@pytest.mark.parametrize("interrupt", [_interrupt_checkpoint, _interrupt_merged, _interrupt_report])
def test_finetune_interrupted_in_a_write_leaves_whole_files_and_resumes(monkeypatch, capsys, finetune_files, tmp_path,
                                                                       interrupt):
    out = tmp_path / "run"
    interrupt(monkeypatch)
    code, _, err = run_cli(finetune_cli.main, finetune_argv(finetune_files, out), capsys)
    assert code == 130 and err.splitlines()[-1].startswith("interrupted: "), err
    assert "Traceback" not in err
    left = contents(out)
    assert not [name for name in left if name.startswith(".") or "/." in name]  # no temporary file or folder
    assert "report.json" not in left  # its absence marks the run as unfinished
    assert not any(name.startswith("merged/") for name in left) or {"merged/config.json",
                                                                    "merged/model.safetensors"} <= set(left)
    monkeypatch.undo()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code, _, err = run_cli(finetune_cli.main, finetune_argv(finetune_files, out, "--resume"), capsys)
    assert code == 0, err
    assert {"report.json", "merged/model.safetensors", "adapter/adapter_config.json"} <= set(contents(out))


def test_finetune_help_and_unknown_flags(capsys):
    code, out, _ = run_cli(finetune_cli.main, ["--help"], capsys)
    assert code == 0 and out.startswith("usage: python -m minigpt.finetune")
    code, _, err = run_cli(finetune_cli.main, ["--bogus"], capsys)
    assert code == 2 and "unrecognized arguments: --bogus" in err


# --- python -m minigpt.budget ---------------------------------------------------------------------

@pytest.mark.parametrize("argv, named", [(["--batch", "0"], "batch=0"), (["--width", "30", "--heads", "4"], "not divisible"),
                                         (["--state-dtype", "fp8"], "state_dtype='fp8'"),
                                         (["--positions", "-1", "--no-measure"], "positions=-1")])
def test_budget_refuses_a_bad_setting_in_one_line_before_measuring(monkeypatch, capsys, argv, named):
    monkeypatch.setattr(budget_cli, "model_matmul_rate", not_reached("the timed matmul"))
    code, out, err = run_cli(budget_cli.main, argv + ["--base", "tiny"], capsys)
    assert (code, out) == (2, "") and err.startswith("error: ") and err.count("\n") == 1 and named in err, err


def test_budget_help_and_unknown_flags(capsys):
    code, out, _ = run_cli(budget_cli.main, ["--help"], capsys)
    assert code == 0 and out.startswith("usage: python -m minigpt.budget")
    code, _, err = run_cli(budget_cli.main, ["--bogus"], capsys)
    assert code == 2 and "unrecognized arguments: --bogus" in err


# --- every command, as a process of its own -------------------------------------------------------

@pytest.mark.parametrize("module, argv", [
    ("minigpt.sample", ["gpt2", "--threads", "0"]),
    ("minigpt.train", ["--threads", "0"]),
    ("minigpt.bench", ["--threads", "0"]),
    ("minigpt.finetune", ["--threads", "0"]),
])
def test_python_m_prints_one_line_and_exits_2(module, argv, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "threads=0: must be a positive integer" in done.stderr
    assert list(tmp_path.iterdir()) == []
