"""minigpt.threads: the thread count and OpenMP wait policy, and who may override them. Nothing is timed here."""

import os
import subprocess
import sys

import pytest
import torch

from minigpt import threads
from minigpt.threads import choose_threads, choose_wait_policy, fitted_threads, wait_policy


def test_the_fitted_count_is_the_cores_other_processes_leave_free(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    for others, expected in ((0, 4), (1, 3), (3, 1), (9, 1)):  # never fewer than one thread
        monkeypatch.setattr(threads, "other_running", lambda others=others: others)
        assert choose_threads().threads == expected


def test_other_running_reads_a_count_from_proc_loadavg():
    n = threads.other_running()
    assert isinstance(n, int) and n >= 0  # 0 off Linux; on Linux the runnable count less this reader


@pytest.mark.parametrize("runnable, others", [(1, 0), (2, 1), (5, 4)])
def test_the_count_of_other_processes_leaves_out_the_reader(monkeypatch, tmp_path, runnable, others):
    # /proc/loadavg's fourth field is runnable/total entities, and the process reading it is one of them
    fake = tmp_path / "loadavg"
    fake.write_text(f"0.52 0.58 0.59 {runnable}/467 12345\n", encoding="ascii")
    monkeypatch.setattr(threads, "LOADAVG", str(fake))
    assert threads.other_running() == others


@pytest.mark.parametrize("content", ["", "0.1 0.2 0.3\n", "0.1 0.2 0.3 many/12 5\n"])
def test_an_unreadable_loadavg_counts_no_other_processes(monkeypatch, tmp_path, content):
    fake = tmp_path / "loadavg"
    fake.write_text(content, encoding="ascii")
    monkeypatch.setattr(threads, "LOADAVG", str(fake))
    assert threads.other_running() == 0
    monkeypatch.setattr(threads, "LOADAVG", str(tmp_path / "absent"))
    assert threads.other_running() == 0


def test_an_explicit_count_beats_omp_num_threads_which_beats_the_fitted_count(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert (choose_threads().threads, choose_threads().reason) == (3, "OMP_NUM_THREADS")
    assert (choose_threads(requested=2).threads, choose_threads(2).reason) == (2, "requested")


@pytest.mark.parametrize("source", ["requested", "OMP_NUM_THREADS"])
def test_a_count_above_the_usable_cores_is_clamped_with_a_note(monkeypatch, source):
    # 100,000 threads would reach OpenMP's thread creation (a crash under a memory limit), so no user
    # count may exceed the cores; torch is never told the larger number
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "100000")
    choice = choose_threads(100000 if source == "requested" else None)
    assert choice.threads == 2
    assert choice.reason == f"{source} 100000, clamped to the 2 usable cores"
    assert "clamped to the 2 usable cores" in choice.describe()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(2 if source == "requested" else None).reason == source  # at the limit: no note


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_a_bad_thread_count_raises_naming_it(bad):
    with pytest.raises(ValueError, match="threads="):
        choose_threads(requested=bad)


def test_a_bad_omp_num_threads_raises_naming_it(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='many'"):
        choose_threads()


def test_fitted_threads_applies_the_choice_and_restores_the_previous_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cores", lambda: before + 1)  # so that before + 1 is not clamped
    with fitted_threads(requested=before + 1) as choice:
        assert torch.get_num_threads() == choice.threads == before + 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("user", [dict(OMP_WAIT_POLICY="ACTIVE"), dict(GOMP_SPINCOUNT="5000")])
def test_the_wait_policy_is_set_only_when_the_user_has_not(monkeypatch, user):
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in user.items():
        monkeypatch.setenv(name, value)
    choose_wait_policy()
    assert {n: os.environ.get(n) for n in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} == {
        "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None, **user}  # neither of ours added to the user's
    for name in user:
        monkeypatch.delenv(name)
    assert choose_wait_policy() == wait_policy({"GOMP_SPINCOUNT": "1000", "OMP_WAIT_POLICY": "PASSIVE"})
    assert (os.environ["GOMP_SPINCOUNT"], os.environ["OMP_WAIT_POLICY"]) == ("1000", "PASSIVE")


def test_the_wait_policy_is_described_from_the_environment_torch_read():
    assert wait_policy({}) == "OpenMP's default (spin, then sleep)"
    assert wait_policy({"OMP_WAIT_POLICY": "passive"}) == "PASSIVE"
    assert wait_policy({"GOMP_SPINCOUNT": "10"}, "linux") == "spin 10 times, then sleep (GOMP_SPINCOUNT=10)"
    ours = {"GOMP_SPINCOUNT": "1000", "OMP_WAIT_POLICY": "PASSIVE"}
    assert wait_policy(ours, "linux") == "spin 1000 times, then sleep (GOMP_SPINCOUNT=1000, OMP_WAIT_POLICY=PASSIVE)"
    assert wait_policy(ours, "darwin") == "PASSIVE"  # LLVM's libomp ignores GOMP_SPINCOUNT


def test_importing_minigpt_sets_the_policy_before_torch_is_loaded():
    code = ("import sys, os\nimport minigpt.model\n"
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["1000", "PASSIVE", "True"]
    imports = [line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    # minigpt.threads is imported (and the policy set) before torch is
    assert imports.index("minigpt.threads") < imports.index("torch")
