"""Token ids are checked where they enter (minigpt/token_ids.py): a prompt, a training batch, validation data.

GPT.forward itself reads no id back (no host sync per step); these doors do, with a ValueError naming the id.
"""

import pytest
import torch

from helpers import FAST, corpus, tiny_gpt
from minigpt.data import get_batch
from minigpt.evaluate import estimate_loss
from minigpt.token_ids import check_token_ids
from minigpt.trainer import TrainConfig, train

V = 64


@pytest.mark.parametrize("ids, match", [
    (torch.tensor([1, 64]), r"token id 64 is outside the vocabulary \[0, 64\)"),
    (torch.tensor([-2, 3]), "token id -2 is outside"),
    (torch.tensor([1.0]), "integer token ids, got torch.float32"),
    (torch.tensor([True]), "integer token ids, got torch.bool"),
    ([1, 2], "integer token ids, got list"),
])
def test_a_bad_id_is_named(ids, match):
    with pytest.raises(ValueError, match=match):
        check_token_ids(ids, V)


def test_ignored_entries_pass_but_not_all_of_them():
    check_token_ids(torch.tensor([-1, 5, 63]), V, ignore=-1)
    with pytest.raises(ValueError, match="every entry is -1"):
        check_token_ids(torch.full((3,), -1), V, "targets", ignore=-1)
    with pytest.raises(ValueError, match=r"or -1 \(ignored\)"):
        check_token_ids(torch.tensor([-1, 64]), V, ignore=-1)


def test_get_batch_checks_the_ids_of_its_batch_against_the_vocabulary():
    data = corpus(200)
    x, _ = get_batch(data, 4, 16, generator=torch.Generator().manual_seed(0), vocab_size=V)
    assert x.shape == (4, 16)
    with pytest.raises(ValueError, match="data: token id 64 is outside"):
        get_batch(torch.full((200,), 64), 4, 16, vocab_size=V)


def test_training_and_evaluation_refuse_ids_the_model_cannot_embed(tmp_path):
    bad = corpus(300).clone()
    bad[:] = V  # every window holds an id the embedding does not have
    cfg = TrainConfig(steps=2, **FAST)
    with pytest.raises(ValueError, match="token id 64 is outside the vocabulary"):
        train(tiny_gpt(), bad, corpus(300), cfg)
    with pytest.raises(ValueError, match="token id 64 is outside the vocabulary"):
        estimate_loss(tiny_gpt(), bad, cfg)


def test_forward_reads_no_id_back():
    # the ids' range is the caller's promise; forward checks shapes only, so this is torch's own error
    with pytest.raises(IndexError):
        tiny_gpt()(torch.full((1, 4), V))
