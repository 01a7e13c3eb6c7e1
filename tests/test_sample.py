"""minigpt.sample and the two command lines: a checkpoint written by `python -m minigpt.train` samples
the same text for the same seed."""

import pytest

from minigpt import sample as sample_cli
from minigpt import train as train_cli
from minigpt.checkpoint import read_checkpoint, save_checkpoint
from minigpt.sample import load_model, sample

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run of the training command line on a small text file, with flags as a user would type them."""
    root = tmp_path_factory.mktemp("cli")
    (root / "input.txt").write_text(TEXT)
    train_cli.main(["--preset", "test", "--tokenizer", "char", "--data", str(root / "input.txt"),
                    "--steps", "20", "--lr-decay-steps", "20", "--batch-size", "4", "--block-size", "16",
                    "--dropout", "0.0", "--no-bias", "--eval-batches", "2", "--device", "cpu", "--threads", "1", "--no-progress",
                    "--out", str(root / "run")])
    return root / "run"


def test_train_cli_writes_a_checkpoint_with_its_flags(run_dir):
    ckpt = read_checkpoint(run_dir)
    assert ckpt["step"] == 20
    assert ckpt["model_config"] == dict(vocab_size=len(set(TEXT)), block_size=16, n_layer=2, n_head=2, n_embd=16,
                                        dropout=0.0, bias=False)
    assert ckpt["train_config"]["batch_size"] == 4 and ckpt["train_config"]["lr_decay_steps"] == 20
    assert ckpt["train_config"]["threads"] == 1
    assert ckpt["extra"]["tokenizer"] == {"name": "char", "chars": "".join(sorted(set(TEXT)))}


def test_same_seed_same_sample(run_dir, capsys):
    argv = ["--ckpt", str(run_dir), "--prompt", "To be", "--max-new-tokens", "40", "--temperature", "1.0",
            "--top-k", "10", "--seed", "7", "--device", "cpu"]
    first = sample_cli.main(argv)
    printed = capsys.readouterr().out
    assert sample_cli.main(argv) == first
    assert printed == first[0] + "\n"
    other = sample_cli.main(argv[:-4] + ["--seed", "8", "--device", "cpu"])
    assert other != first
    assert first[0].startswith("To be") and len(first[0]) == len("To be") + 40  # one character per token


def test_num_samples_continue_one_generator(run_dir):
    model, tok = load_model(run_dir)
    two = sample(model, tok, "the", 20, seed=3, num_samples=2)
    assert two[0] == sample(model, tok, "the", 20, seed=3)[0]
    assert two[0] != two[1]


def test_greedy_sampling_ignores_the_seed(run_dir):
    model, tok = load_model(run_dir)
    assert sample(model, tok, "the", 20, temperature=0.0, seed=1) == sample(model, tok, "the", 20, temperature=0.0, seed=2)


def test_bad_prompts_and_checkpoints_raise(run_dir, tmp_path):
    model, tok = load_model(run_dir)
    with pytest.raises(ValueError, match="prompt is empty"):
        sample(model, tok, "", 5)
    with pytest.raises(ValueError, match="'Z' is not in"):
        sample(model, tok, "Zebra", 5)  # the char vocabulary only has the training text's characters
    for p in model.parameters():
        p.requires_grad = False
    model.lm_head.weight.requires_grad = True
    save_checkpoint(tmp_path, model, trainable_only=True, extra=read_checkpoint(run_dir)["extra"])
    with pytest.raises(ValueError, match="only the trainable parameters"):
        load_model(tmp_path)
