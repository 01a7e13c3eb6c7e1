"""`python -m minigpt.train`: train MiniGPT from scratch on tiny Shakespeare (or any text file).

    python -m minigpt.train --preset cpu-char --tokenizer char --steps 2000 --dropout 0.0
    torchrun --nproc_per_node 2 -m minigpt.train ...      # DistributedDataParallel: gloo on CPU, nccl on CUDA

The flags use the vocabulary of every minigpt command: --data is a text file, --steps counts
optimizer steps, --eval-batches validation batches, --out the output folder, and --device, --seed
and --no-progress mean the same everywhere. The other flags are TrainConfig fields of the same
name (--batch-size, --lr, --warmup-steps, ...); --n-layer, --n-head, --n-embd, --dropout, --bias
and --block-size override the preset's model.
"""

import argparse
import os
import pathlib
import typing
from dataclasses import fields

import torch
import torch.distributed as dist

from minigpt.checkpoint import rank_world
from minigpt.cli import check_writable, one_line_errors
from minigpt.data import encode_text, load_tiny_shakespeare, split_train_val
from minigpt.device import DEVICES, pick_device
from minigpt.model import GPT, PRESETS, GPTConfig, check_allocatable
from minigpt.threads import choose_threads, user_threads
from minigpt.tokenizer import get_tokenizer
from minigpt.trainer import TrainConfig, train

TOKENIZERS = ("char", "byte", "gpt2")
MODEL_FLAGS = {"n_layer": int, "n_head": int, "n_embd": int, "dropout": float, "bias": bool}
TRAIN_FLAGS = (  # (TrainConfig field, metavar, help); the default is read from TrainConfig
    ("steps", "N", "optimizer steps"), ("batch_size", "N", "sequences per micro-step, summed over all processes"),
    ("block_size", "N", "tokens per sequence (default: the preset's)"),
    ("grad_accum_steps", "N", "micro-batches per optimizer step"), ("lr", "LR", "peak learning rate"),
    ("min_lr", "LR", "floor of the cosine decay"), ("warmup_steps", "N", "linear warm-up steps"),
    ("lr_decay_steps", "N", "step where the cosine reaches min-lr (default: --steps)"),
    ("weight_decay", "X", "AdamW weight decay, on matrices only"), ("beta1", "X", "AdamW beta1"),
    ("beta2", "X", "AdamW beta2"), ("grad_clip", "X", "max gradient norm; 0 = no clipping"),
    ("eval_interval", "N", "steps between evaluations; 0 = at the end only"),
    ("eval_batches", "N", "validation batches per evaluation"), ("seed", "N", "seed of weights, batches and dropout"),
    ("out", "DIR", "output folder of ckpt.pt (default: out-<text>-<tokenizer>, e.g. out-shakespeare-char)"),
    ("checkpoint_interval", "N", "also checkpoint every N steps; 0 = at the end only"),
    ("metrics_path", "FILE", "JSON lines, one per step (default: none)"),
    ("threads", "N", "torch threads, at most the usable cores (default: $OMP_NUM_THREADS, else one per core free "
                     "at the start)"),
)
SWITCHES = (("compile", "torch.compile the model"), ("resume", "continue from --out's ckpt.pt when it exists"),
            ("gradient_checkpointing", "recompute activations in backward: less memory, more time"))


def _flag_type(f):
    """int for `int | None`, and so on: the one non-None type of a dataclass field."""
    return next((t for t in typing.get_args(f.type) if t is not type(None)), f.type)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minigpt.train", description="Train MiniGPT from scratch.")
    p.add_argument("--preset", default="cpu-char", choices=sorted(PRESETS), help="model preset (default: cpu-char)")
    p.add_argument("--data", metavar="FILE", help="a text file to train on (default: tiny Shakespeare)")
    p.add_argument("--tokenizer", default="char", choices=TOKENIZERS,
                   help="char: the text's characters (nanoGPT's shakespeare_char); byte: 256 bytes; gpt2: GPT-2's BPE "
                        "(default: char)")
    for name, kind in MODEL_FLAGS.items():
        how = dict(action=argparse.BooleanOptionalAction) if kind is bool else dict(type=kind, metavar="N" if kind is int else "X")
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                       help="model override (default: the preset's)", **how)
    defaults = {f.name: f for f in fields(TrainConfig)}
    for name, metavar, help in TRAIN_FLAGS:
        f = defaults[name]
        shown = help if "(default:" in help else f"{help} (default: {f.default})"
        p.add_argument("--" + name.replace("_", "-"), type=_flag_type(f), metavar=metavar, default=argparse.SUPPRESS,
                       help=shown)
    p.add_argument("--device", choices=DEVICES, default=argparse.SUPPRESS, help="where to train (default: auto)")
    for name, help in SWITCHES:
        p.add_argument("--" + name.replace("_", "-"), action="store_true", default=argparse.SUPPRESS, help=help)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                   help="hide the progress bar (shown by default)")
    return p


def check_outputs(out, metrics_path):
    """--out (a folder, or a .pt file) and --metrics-path must be places this process can write."""
    check_writable("out", out, folder=not os.fspath(out).endswith(".pt"))
    if metrics_path is not None:
        check_writable("metrics_path", metrics_path, folder=False)


def main(argv=None):
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    model_kw = {k: args[k] for k in (*MODEL_FLAGS, "block_size") if k in args}
    text_name = pathlib.Path(args["data"]).stem if args["data"] else "shakespeare"
    args.setdefault("out", f"out-{text_name}-{args['tokenizer']}")
    interrupted = (f"interrupted: every file in {args['out']} is whole (a checkpoint is written beside the old one, "
                   "then renamed); continue from the last one with --resume")
    with one_line_errors(interrupted):
        return _run(args, model_kw, text_name)


def _run(args, model_kw, text_name):
    """The command after parsing: every check first (settings, model sizes, outputs, threads), then the work."""
    cfg = TrainConfig(**{f.name: args[f.name] for f in fields(TrainConfig) if f.name in args},
                      progress_desc=f"training {args['preset']} on {text_name}")
    check_allocatable(GPTConfig.from_preset(args["preset"], **model_kw))  # the overrides, before the text is read
    check_outputs(cfg.out, cfg.metrics_path)
    pick_device(cfg.device)  # cuda or mps asked for but absent
    user_threads(cfg.threads)  # --threads and OMP_NUM_THREADS
    started = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()  # under torchrun
    if started:
        cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    text = load_tiny_shakespeare(args["data"])
    tokenizer = get_tokenizer(args["tokenizer"], text=text)
    train_text, val_text = split_train_val(text)  # split the text, then encode, as nanoGPT does for GPT-2
    train_ids, val_ids = encode_text(tokenizer, train_text), encode_text(tokenizer, val_text)
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    model = GPT(GPTConfig.from_preset(args["preset"], vocab_size=tokenizer.vocab_size, **model_kw))
    if rank_world()[0] == 0:
        print(f"{model.num_parameters():,} parameters; {len(train_ids):,} train and {len(val_ids):,} val tokens "
              f"({tokenizer.name} tokenizer, vocabulary {tokenizer.vocab_size})")
        print(f"threads: {choose_threads(cfg.threads).describe()}")
    result = train(model, train_ids, val_ids, cfg, extra={"tokenizer": tokenizer.to_dict(), "data": args["data"]})
    if rank_world()[0] == 0:
        print(f"step {cfg.steps}: val loss {result.final_val_loss:.4f}; {result.wall_time:.1f} s in all, "
              f"{result.step_time_ms:.1f} ms/step, {result.tokens_per_sec:,.0f} tokens/s; "
              f"checkpoint {result.checkpoint_path}")
    if started:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
