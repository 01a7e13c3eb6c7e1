"""minigpt.bench: the --quick run finishes, prints markdown and writes JSON with every section's fields.

No test here looks at how fast anything is: timings depend on the machine and its load.
"""

import json

import pytest
import torch

from minigpt.bench import SECTIONS, BenchConfig, busy_warning, run
from minigpt.bench.__main__ import parse_args
from minigpt.bench.harness import summarize
from minigpt.threads import usable_cores, wait_policy

SUMMARY_KEYS = {"median", "q1", "q3", "min", "max", "n"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """What `python -m minigpt.bench --quick --threads 1` writes and prints, run once in-process."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = []
    threads_before = torch.get_num_threads()
    run(parse_args(["--quick", "--threads", "1", "--out", str(out)]), emit=printed.append)
    assert torch.get_num_threads() == threads_before  # the pinned count does not leak into later tests
    return json.loads(out.read_text()), "\n".join(printed)


def _results(data, key):
    return data["sections"][key]["results"]


def _assert_summary(summary):
    assert SUMMARY_KEYS <= set(summary)
    assert summary["min"] <= summary["q1"] <= summary["median"] <= summary["q3"] <= summary["max"]


def test_quick_run_writes_every_section(quick_run):
    data, _ = quick_run
    assert set(data["sections"]) == {key for key, _ in SECTIONS.values()}
    assert data["meta"]["threads"] == 1
    for field in ("cpu", "torch", "command", "load_average_before", "load_average_after"):
        assert field in data["meta"]
    for section in data["sections"].values():
        assert section["tables"] and all(len(row) == len(t["headers"]) for t in section["tables"] for row in t["rows"])


def _train_memory(data):
    (model,) = _results(data, "train_step")  # --quick trains one model
    return [model["memory"][m] for m in ("full", "lora", "qlora")]


def test_train_step_section_has_every_method_and_figure(quick_run):
    data, _ = quick_run
    (model,) = _results(data, "train_step")
    assert model["timing"]["status"] == "ok", model["timing"].get("error")
    for method in ("full", "lora", "qlora"):
        _assert_summary(model["timing"]["step"][method])
        assert model["timing"]["tokens_per_s"][method] > 0
    for r in _train_memory(data):
        assert r["status"] == "ok", r.get("error")
        for field in ("grad_bytes", "optimizer_bytes", "weight_bytes", "process_peak_rss_bytes", "start_rss_bytes",
                      "trainable", "params"):
            assert r[field] > 0, field
        assert r["training_peak_rss_bytes"] is None or 0 < r["training_peak_rss_bytes"] <= r["process_peak_rss_bytes"]
    names = {t["name"].split(": ", 1)[1].split(" (predicted")[0] for t in data["sections"]["train_step"]["targets"]}
    assert names == {"LoRA step time / full step time", "LoRA (gradient + optimizer bytes) / full's",
                     "QLoRA quantised weight bytes / their float32 bytes", "LoRA all-linear step time / full",
                     "LoRA all-linear (gradient + optimizer bytes) / full's",
                     "frozen floor step time / full (no weight gradient at all, reported)",
                     "LoRA all-linear's own time / the weight gradients' time, (lora - frozen) / (full - frozen) (reported)"}


def test_train_step_rows_put_predicted_flops_beside_measured_times(quick_run):
    from minigpt.bench.train_step import ALL_LINEAR, TIMED, predicted_step_flops

    data, _ = quick_run
    (model,) = _results(data, "train_step")
    timing = model["timing"]
    assert set(timing["step"]) == set(TIMED) and timing["matmul_flops_per_s"] > 0
    for method in TIMED:  # achieved FLOP/s = the calculator's FLOPs over the measured median
        flops = predicted_step_flops(timing["preset"], method, timing["batch"], timing["seq_len"])
        assert timing["flops_per_s"][method] * timing["step"][method]["median"] == pytest.approx(flops)
    # all-linear LoRA trains every block linear's adapters: 4 layers x 2 blocks x 8 (d_in + d_out) for the test preset
    assert model["memory"][ALL_LINEAR]["trainable"] == 2 * 8 * (16 + 48 + 16 + 16 + 16 + 64 + 64 + 16)
    (table,) = data["sections"]["train_step"]["tables"]
    rows = {row[1]: dict(zip(table["headers"], row, strict=True)) for row in table["rows"]}
    assert float(rows["full"]["predicted FLOPs / full"]) == 1.0
    assert float(rows["lora"]["predicted FLOPs / full"]) < 1.0 < float(rows[ALL_LINEAR]["predicted FLOPs / full"])


def test_frozen_floor_computes_no_weight_gradient(quick_run):
    from minigpt.bench.train_step import ALL_LINEAR, FROZEN, predicted_step_flops

    data, _ = quick_run
    (model,) = _results(data, "train_step")
    frozen = model["memory"][FROZEN]
    assert frozen["status"] == "ok", frozen.get("error")
    # one trained tensor, the first block's c_attn bias (3C = 48 for the test preset): its gradient is the only one
    assert frozen["trainable"] == 48 and frozen["grad_bytes"] == 4 * 48
    timing = model["timing"]
    shape = timing["preset"], timing["batch"], timing["seq_len"]
    assert predicted_step_flops(shape[0], FROZEN, *shape[1:]) < predicted_step_flops(shape[0], ALL_LINEAR, *shape[1:])
    floor = {t["name"].split(": ", 1)[1]: t["value"] for t in data["sections"]["train_step"]["targets"]}
    t = {m: timing["step"][m]["median"] for m in ("full", ALL_LINEAR, FROZEN)}
    assert floor["frozen floor step time / full (no weight gradient at all, reported)"] == pytest.approx(
        t[FROZEN] / t["full"])


def test_gradients_exist_only_for_trainable_parameters(quick_run):
    data, _ = quick_run
    full, lora, qlora = _train_memory(data)
    assert full["grad_bytes"] == 4 * full["params"] == 4 * full["trainable"]
    # frozen weights hold no .grad: the gradient bytes are exactly the float32 adapters'
    assert lora["grad_bytes"] == 4 * lora["trainable"] < full["grad_bytes"]
    assert qlora["grad_bytes"] == 4 * qlora["trainable"] == lora["grad_bytes"]


def test_qlora_stores_its_linear_weights_in_about_4_bits(quick_run):
    data, _ = quick_run
    qlora = _train_memory(data)[2]
    bits = 32 * qlora["quantized_bytes"] / qlora["quantized_fp32_bytes"]
    assert 4.0 < bits < 4.5  # 4.127 for large matrices; the quick model's tiny ones pay a little padding


def test_inference_layer_and_nf4_sections_have_their_fields(quick_run):
    data, _ = quick_run
    inference = _results(data, "inference")
    assert {r["variant"] for r in inference} == {"base", "lora unmerged", "lora merged", "merged + unloaded"}
    for r in inference:
        _assert_summary(r["forward"])
        assert r["ratio_to_base"] > 0
    for r in _results(data, "lora_layer"):
        for mode in ("forward", "forward_backward"):
            _assert_summary(r[mode]["linear"])
            _assert_summary(r[mode]["lora"])
    nf4 = _results(data, "nf4")
    assert {r["double_quant"] for r in nf4} == {False, True}
    for r in nf4:
        _assert_summary(r["quantize"])
        _assert_summary(r["dequantize"])
        assert r["quantize_gb_s"] > 0 and r["dequantize_gb_s"] > 0 and 0 < r["rmse"] < 0.02


def test_throughput_section_reports_eager_and_compile_status(quick_run):
    data, _ = quick_run
    (r,) = _results(data, "throughput")
    assert r["status"] == "ok" and (r["batch"], r["block"]) == (12, 64)
    _assert_summary(r["step"]["eager"])
    assert r["tokens_per_s"]["eager"] > 0
    assert "torch.compile" not in r["step"]  # --quick never compiles
    rows = data["sections"]["throughput"]["tables"][0]["rows"]
    assert rows[1][:2] == ["torch.compile", "not measured: not run with --quick"]


def test_generation_section_times_cached_and_uncached_with_the_same_tokens(quick_run):
    data, _ = quick_run
    (r,) = _results(data, "generation")
    assert r["status"] == "ok", r.get("error")
    for batch in r["batches"].values():
        assert batch["same_tokens"] is True
        for variant in ("cached", "uncached"):
            _assert_summary(batch["time"][variant])
            assert batch["tokens_per_s"][variant] > 0


def test_busy_section_measures_every_setting_idle_and_beside_a_competitor(quick_run):
    data, _ = quick_run
    results = _results(data, "busy")
    assert {(r["setting"], r["mode"]) for r in results} == {
        (s, m) for s in ("torch defaults", "ACTIVE", "PASSIVE, all cores", "short spin, all cores", "minigpt's choice")
        for m in ("idle", "busy")}
    for r in results:
        assert r["status"] == "ok", r.get("error")
        _assert_summary(r["step"])
    policies = {r["setting"]: r["wait_policy"] for r in results}
    assert policies["torch defaults"] == "OpenMP's default (spin, then sleep)"
    assert policies["PASSIVE, all cores"] == "PASSIVE"
    ours = wait_policy({"GOMP_SPINCOUNT": "1000", "OMP_WAIT_POLICY": "PASSIVE"})  # set by `import minigpt`
    assert policies["short spin, all cores"] == policies["minigpt's choice"] == ours
    ours = {r["mode"]: r["threads"] for r in results if r["setting"] == "minigpt's choice"}
    # one thread per free core: the spinning competitor takes one of them (never fewer than one thread)
    assert ours["busy"] <= max(1, usable_cores() - 1) and ours["busy"] <= ours["idle"]


def test_markdown_tables_and_thread_count_are_printed(quick_run):
    _, printed = quick_run
    assert "threads: 1 (torch.set_num_threads)" in printed
    for number in SECTIONS:
        assert f"### {number}. " in printed
    assert "| model | method |" in printed


def test_summarize_gives_median_quartiles_and_range():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)


@pytest.mark.parametrize("argv", [["--sections", "9"], ["--sections", "one"], ["--threads", "0"], ["--repeats", "0"]])
def test_bad_arguments_raise_value_error(argv):
    with pytest.raises(ValueError):
        parse_args(argv)


def test_config_fills_quick_defaults():
    cfg = BenchConfig(sections=(4, 1, 4), quick=True)
    assert (cfg.sections, cfg.warmup, cfg.repeats) == ((1, 4), 1, 3)


def test_busy_machine_warning_only_when_threads_exceed_free_cores():
    assert busy_warning([0.1, 0.1, 0.1], threads=2, cpus=2) is None
    assert busy_warning([1.0, 1.0, 1.0], threads=1, cpus=2) is None
    assert "load average 1.0" in busy_warning([1.0, 1.0, 1.0], threads=2, cpus=2)
    assert busy_warning(None, threads=2, cpus=2) is None  # no load average on this OS
