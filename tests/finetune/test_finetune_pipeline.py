"""The fine-tuning job end to end, on a 2-layer 16-wide byte model pretrained for a few steps on a tiny corpus."""

import dataclasses
import json
import pathlib

import pytest
import torch

from helpers import write_fine_tune_texts
from lora import load_adapter
from lora.inject import apply_lora
from minigpt.checkpoint import read_checkpoint
from minigpt.download import data_dir
from minigpt.finetune import FinetuneConfig, FinetuneReport, format_report, run_finetune
from minigpt.finetune.__main__ import main
from minigpt.finetune.base_model import BaseRecipe, tiny_base
from minigpt.finetune.compare import run_compare
from minigpt.model import GPT, GPTConfig
from minigpt.pretrained import load_pretrained, save_pretrained
from minigpt.sample import main as sample_main
from minigpt.sources import load_model

METHODS = ("full", "lora", "qlora")



@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    write_fine_tune_texts(root)
    return root


def _cfg(files, method, name=None, **kw):
    fields = dict(method=method, base_corpus=str(files / "corpus.txt"), base_preset="test", base_steps=60, lr=1e-2,
                  data=str(files / "play.txt"), cache_dir=str(files / "cache"), out=str(files / (name or method)),
                  rank=4, steps=30, batch_size=8, block_size=16, eval_interval=10, eval_batches=4,
                  sample_tokens=8, prompt="THE ", device="cpu", progress=False)
    return FinetuneConfig(**{**fields, **kw})


@pytest.fixture(scope="module")
def runs(files):
    return {m: (_cfg(files, m), run_finetune(_cfg(files, m))) for m in METHODS}


def _trained_model(cfg, report):
    """A fresh base with the final trainable weights of the run's checkpoint (not its adapter files)."""
    model = load_pretrained(report.base_path)
    if cfg.method == "qlora":
        from lora.quant.nf4_linear import quantize_model
        quantize_model(model, "all-linear")
    if cfg.method != "full":
        apply_lora(model, cfg.lora)
    model.load_state_dict(read_checkpoint(cfg.out)["model"], strict=False)
    return model.eval()


def _batch():
    return torch.tensor([list(b"THE KING AND QUE"), list(b"GOOD NIGHT MY LO")])


@pytest.mark.parametrize("method", METHODS)
def test_val_loss_goes_down(runs, method):
    report = runs[method][1]
    assert report.val_loss_after < report.val_loss_before - 0.1


@pytest.mark.parametrize("method", METHODS)
def test_report_json_holds_every_field(runs, method):
    cfg, report = runs[method]
    out = pathlib.Path(cfg.out)
    saved = json.loads((out / "report.json").read_text())
    assert set(saved) == {f.name for f in dataclasses.fields(FinetuneReport)}
    assert FinetuneReport.from_dict(saved) == FinetuneReport.from_dict(json.loads(json.dumps(report.to_dict())))
    for name in ("config.json", "metrics.jsonl", "loss_curve.png", "merged/model.safetensors"):
        assert (out / name).is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file() == (method != "full")
    assert "trainable params: " in report.params_summary and report.total_params >= report.trainable_params > 0
    assert format_report(report).count("\n") >= 5


def test_lora_trains_r_times_din_plus_dout_per_layer(runs):
    # per block, (d_in + d_out) summed over c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj is 4C + 2C + 5C + 5C
    C, n_layer, rank = 16, 2, 4
    assert runs["lora"][1].trainable_params == rank * 16 * C * n_layer
    assert runs["qlora"][1].trainable_params == runs["lora"][1].trainable_params
    # NF4 stores the 12 C^2 weights per block in ~4.13 bits instead of 32: at least 80% of their bytes go
    saved = runs["qlora"][1].quantized_bytes_before - runs["qlora"][1].quantized_bytes_after
    assert saved > 0.8 * 4 * 12 * C * C * n_layer


def test_trainable_percent_is_100_times_trainable_over_total(runs):
    # counted apart from the report: the base's own parameters, and r (d_in + d_out) per adapted layer
    C, n_layer, rank = 16, 2, 4
    base = load_pretrained(runs["lora"][1].base_path).num_parameters()
    lora = runs["lora"][1]
    assert (lora.trainable_params, lora.total_params) == (rank * 16 * C * n_layer, base + rank * 16 * C * n_layer)
    assert lora.trainable_percent == pytest.approx(100 * lora.trainable_params / lora.total_params, rel=1e-12)
    assert 1 < lora.trainable_percent < 100  # a fraction in percent: neither the ratio itself nor trainable / frozen
    assert runs["full"][1].trainable_percent == 100.0


def test_base_is_pretrained_once_then_cached(runs):
    cached = [runs[m][1].base_cached for m in METHODS]
    assert cached == [False, True, True]
    assert len({runs[m][1].base_path for m in METHODS}) == 1


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapter_reloads_into_fresh_base_exactly(runs, method):
    cfg, report = runs[method]
    model = load_pretrained(report.base_path)
    if method == "qlora":
        from lora.quant.nf4_linear import quantize_model
        quantize_model(model, "all-linear")
    load_adapter(model, pathlib.Path(cfg.out) / "adapter")
    with torch.no_grad():
        assert torch.equal(model.eval()(_batch())[0], _trained_model(cfg, report)(_batch())[0])


@pytest.mark.parametrize("method", METHODS)
def test_merged_model_reloads_and_matches(runs, method):
    cfg, report = runs[method]
    merged = load_pretrained(pathlib.Path(cfg.out) / "merged").eval()
    with torch.no_grad():
        diff = (merged(_batch())[0] - _trained_model(cfg, report)(_batch())[0]).abs().max().item()
    assert diff < 1e-4
    if method != "full":
        assert 0 <= report.merged_max_abs_logit_diff < 1e-4


def _losses(cfg):
    lines = (pathlib.Path(cfg.out) / "metrics.jsonl").read_text().splitlines()
    return [(m["step"], m.get("loss"), m.get("val_loss")) for m in map(json.loads, lines)]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_gives_the_same_losses(files, runs, method):
    cfg = _cfg(files, method, name=f"{method}-resumed")

    def interrupt(step, metrics):
        if step == 25:  # after the checkpoint of step 20, and in the middle of writing a metrics line
            with open(pathlib.Path(cfg.out) / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write('{"step": 26, "loss": 1.2')
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(cfg, callback=interrupt)
    report = run_finetune(dataclasses.replace(cfg, resume=True))
    assert report.resumed_from_step == 20
    assert _losses(cfg) == _losses(runs[method][0])
    assert report.val_loss_after == runs[method][1].val_loss_after


@pytest.mark.skipif(not (data_dir() and (data_dir() / "gpt2" / "vocab.bpe").is_file()),
                    reason="needs GPT-2's BPE files in $MINIGPT_DATA_DIR/gpt2")
def test_gpt2_layout_folder_fine_tunes_with_bpe_and_short_blocks(files):
    folder = files / "gpt2-like"
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=1, n_head=2, n_embd=16)), folder)
    cfg = _cfg(files, "lora", name="gpt2-like-lora", base=str(folder), base_corpus=None,
               steps=6, eval_interval=3, eval_batches=2)
    report = run_finetune(cfg)
    assert report.val_loss_after < report.val_loss_before
    assert report.trainable_params == 4 * 16 * 16  # one block: r * 16 C
    assert (files / "gpt2-like-lora" / "adapter" / "adapter_config.json").is_file()


def test_compare_writes_table_and_plot(files):
    summary = run_compare(_cfg(files, "lora", name="compare", steps=10), ranks=(1, 4))
    assert list(summary["reports"]) == ["full", "lora-r1", "lora-r4", "qlora-r8", "dora-r8", "pissa-r8", "scratch"]
    table = (files / "compare" / "compare.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + 7 and (files / "compare" / "compare.png").is_file()


@pytest.mark.parametrize("change, match", [
    (dict(method="dora"), "method='dora'"),
    (dict(base="gpt5"), "base='gpt5'"),
    (dict(rank=17), "rank=17"),
    (dict(steps=0), "steps=0"),
    (dict(batch_size=-1), "batch_size=-1"),
    (dict(targets="c_nothing"), "c_nothing"),
    (dict(block_size=17), "block_size=17"),
    (dict(targets="lm_head"), "'lm_head' shares its weight"),
    (dict(targets="c_attn, lm_head"), "'lm_head' shares its weight"),
    (dict(targets="lm_head", method="qlora"), "'lm_head' shares its weight"),
    (dict(init="olora"), "init='olora'"),
    (dict(init="pissa", method="qlora"), "init='pissa' needs the float base"),
    (dict(dora=True, method="full"), "method='full' trains every weight"),
    (dict(dora=1), "dora=1"),
])
def test_bad_config_raises_before_anything_is_written(files, change, match):
    cfg = dataclasses.replace(_cfg(files, "lora", name="bad"), **change)
    with pytest.raises(ValueError, match=match):
        run_finetune(cfg)
    assert not (files / "bad").exists()


@pytest.mark.parametrize("content", [b"", b"abc\x00def", b"\xff\xfe bad"])
def test_bad_corpus_raises_before_anything_is_written(files, tmp_path, content):
    (tmp_path / "c.txt").write_bytes(content)
    cfg = dataclasses.replace(_cfg(files, "lora"), base_corpus=str(tmp_path / "c.txt"), out=str(tmp_path / "o"),
                              cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="c.txt"):
        run_finetune(cfg)
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()


def test_out_holding_another_run_is_refused(runs):
    cfg, _ = runs["lora"]
    before = {p.name: p.stat().st_mtime_ns for p in pathlib.Path(cfg.out).iterdir()}
    with pytest.raises(ValueError, match=r"another configuration: rank=4 \(here 2\)"):
        run_finetune(dataclasses.replace(cfg, rank=2))
    with pytest.raises(ValueError, match="another configuration"):
        run_finetune(dataclasses.replace(cfg, rank=2, resume=True))
    assert {p.name: p.stat().st_mtime_ns for p in pathlib.Path(cfg.out).iterdir()} == before


def test_cli_prints_one_line_and_exits_2_on_bad_input(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--method", "sft"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "method='sft'" in err


def test_cached_base_has_the_same_weights(files):
    recipe = BaseRecipe(preset="test", steps=40, corpus=str(files / "corpus.txt"))
    a, info_a = tiny_base(recipe, device="cpu", root=files / "cache2", progress=False)
    b, info_b = tiny_base(recipe, device="cpu", root=files / "cache2", progress=False)
    assert (info_a["cached"], info_b["cached"]) == (False, True)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("method", METHODS)
def test_sample_command_reads_the_run_folder(runs, method, capsys):
    cfg, report = runs[method]
    assert json.loads((pathlib.Path(cfg.out) / "model.json").read_text())["tokenizer"] == {"name": "byte"}
    texts = sample_main([cfg.out, "--prompt", "THE ", "--max-new-tokens", "6", "--device", "cpu"])
    assert texts[0].startswith("THE ") and len(texts[0]) > len("THE ")  # bytes may decode to U+FFFD
    merged = load_pretrained(pathlib.Path(cfg.out) / "merged").eval()
    loaded, _ = load_model(cfg.out)
    with torch.no_grad():
        assert torch.equal(loaded(_batch())[0], merged(_batch())[0])


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_rank_and_targets_are_checked_once_on_the_fine_tune_path(files, method, monkeypatch):
    """From FinetuneConfig to the layers: one LoraConfig is built (its __post_init__ checks r, α, ...) and the
    targets string is read once; validate, the pipeline, quantize_model, apply_lora and save_adapter pass it on."""
    import lora.config
    import lora.quant.nf4_linear
    import lora.targets

    built, parsed = [], []
    post_init, user_targets = lora.config.LoraConfig.__post_init__, lora.targets.user_targets

    def counting_post_init(self):
        built.append(self.r)
        post_init(self)

    def counting_user_targets(value, field="targets"):
        parsed.append(value)
        return user_targets(value, field)

    monkeypatch.setattr(lora.config.LoraConfig, "__post_init__", counting_post_init)
    for module in (lora.config, lora.targets, lora.quant.nf4_linear):  # every place that reads targets
        monkeypatch.setattr(module, "user_targets", counting_user_targets)
    run_finetune(_cfg(files, method, name=f"once-{method}", steps=2, eval_interval=2, rank=3, targets="c_attn, c_fc"))
    assert built == [3], f"LoraConfig built {len(built)} times: {built}"
    assert [p for p in parsed if isinstance(p, str)] == ["c_attn, c_fc"], parsed  # the string, read once
    assert all(p == ("c_attn", "c_fc") for p in parsed[1:]), parsed  # later doors get the parsed tuple as it is
