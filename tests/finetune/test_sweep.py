"""In-memory sweeps (minigpt/finetune/sweep.py) on a 2-layer 16-wide byte model pretrained for a few steps."""

import pathlib

import pytest
import torch

from helpers import words_text, write_fine_tune_texts
from minigpt.data import encode_text, split_train_val
from minigpt.finetune import FinetuneConfig
from minigpt.finetune.base_model import PRETRAIN_FRACTION, heldout_corpus_ids
from minigpt.finetune.config import recipe_of
from minigpt.finetune.sweep import Sweep
from minigpt.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    write_fine_tune_texts(root)
    cfg = FinetuneConfig(base_corpus=str(root / "corpus.txt"), base_preset="test", base_steps=60, lr=1e-2,
                         data=str(root / "play.txt"), cache_dir=str(root / "cache"), out=str(root / "never"),
                         rank=4, steps=12, batch_size=4, block_size=16, eval_interval=12, eval_batches=3, device="cpu")
    return Sweep(cfg, extra={"corpus": heldout_corpus_ids(recipe_of(cfg))})


def test_a_run_asked_for_twice_is_trained_once(sweep):
    first = sweep.run(rank=4)
    assert sweep.run(rank=4) is first
    assert sweep.run() is first  # rank 4 is the sweep's own setting: the same configuration
    assert sweep.run(rank=2) is not first


def test_runs_learn_and_leave_the_base_unchanged(sweep):
    before = {k: v.clone() for k, v in sweep.base.state_dict().items()}
    run = sweep.run(method="full")
    assert run.val_loss < sweep.base_losses()["val"]
    assert all(torch.equal(v, sweep.base.state_dict()[k]) for k, v in before.items())


def test_every_run_is_measured_on_the_extra_texts(sweep):
    run = sweep.run(rank=2)
    assert set(run.losses) == {"val", "corpus"}
    assert run.losses == pytest.approx(sweep.losses(run.model, run.cfg))  # the same batches as losses()
    assert run.trainable_params == 2 * 16 * 16 * 2  # r (d_in + d_out) summed per block: 16 C, C = 16, 2 blocks


def test_lora_plus_ratio_one_is_plain_lora_and_a_larger_ratio_is_not(sweep):
    plain, one, sixteen = sweep.run(rank=4), sweep.run(rank=4, lora_plus_ratio=1.0), sweep.run(rank=4, lora_plus_ratio=16.0)
    assert one is not plain  # kept apart: the key holds the ratio
    assert one.val_loss == pytest.approx(plain.val_loss, abs=1e-5)
    assert abs(sixteen.val_loss - plain.val_loss) > 1e-3


def test_a_run_of_another_seed_fine_tunes_the_same_base(sweep):
    other = sweep.run(seed=7)
    # step 0 is the sweep's base, measured on seed 7's evaluation batches
    assert other.cfg.seed == 7 and other.result.val_losses[0][1] == pytest.approx(sweep.losses(sweep.base, other.cfg)["val"])
    assert other.val_loss != sweep.run().val_loss


def test_nothing_is_written(sweep):
    sweep.run(rank=1)
    assert not pathlib.Path(sweep.cfg.out).exists()


@pytest.mark.parametrize("changes, match", [
    (dict(method="full", lora_plus_ratio=4.0), "method='full' has no B"),
    (dict(rank=0), "rank"),
    (dict(lora_plus_ratio=-1.0), "ratio"),
    (dict(base_steps=30), "one base"),
])
def test_bad_runs_raise_naming_the_value(sweep, changes, match):
    with pytest.raises(ValueError, match=match):
        sweep.run(**changes)


def test_heldout_corpus_is_the_tail_pretraining_never_trained_on(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(words_text(2, 500), encoding="utf-8")
    recipe = recipe_of(FinetuneConfig(base_corpus=str(path)))
    ids = encode_text(get_tokenizer("byte"), path.read_text(encoding="utf-8"))
    held = heldout_corpus_ids(recipe)
    assert len(held) == len(ids) - int(len(ids) * PRETRAIN_FRACTION) > 0
    assert torch.equal(held, ids[-len(held):]) and torch.equal(held, split_train_val(ids, PRETRAIN_FRACTION)[1])
