"""`python -m minigpt.train`: train MiniGPT from scratch on tiny Shakespeare (or any text file).

    python -m minigpt.train --preset cpu-char --tokenizer char --steps 2000 --dropout 0.0
    torchrun --nproc_per_node 2 -m minigpt.train ...      # DistributedDataParallel: gloo on CPU, nccl on CUDA

The flags use the vocabulary of every minigpt command: --data is a text file, --steps counts
optimizer steps, --eval-batches validation batches, --out the output folder. Every other
TrainConfig field is a flag of the same name (--batch-size, --lr, --warmup-iters, ...); --n-layer,
--n-head, --n-embd, --dropout, --bias and --block-size override the preset's model.
"""

import argparse
import os
import pathlib
import typing
from dataclasses import fields

import torch
import torch.distributed as dist

from minigpt.checkpoint import rank_world
from minigpt.data import encode_text, load_tiny_shakespeare, split_train_val
from minigpt.model import GPT, PRESETS, GPTConfig
from minigpt.threads import choose_threads, model_params
from minigpt.tokenizer import get_tokenizer
from minigpt.trainer import TrainConfig, train

TOKENIZERS = ("char", "byte", "gpt2")
MODEL_FLAGS = {"n_layer": int, "n_head": int, "n_embd": int, "dropout": float, "bias": bool}
# TrainConfig keeps nanoGPT's field names; the command line speaks the project's common vocabulary
FLAG_NAMES = {"max_iters": "steps", "eval_iters": "eval_batches", "out_dir": "out"}


def _flag_type(f):
    """int for `int | None`, and so on: the one non-None type of a dataclass field."""
    return next((t for t in typing.get_args(f.type) if t is not type(None)), f.type)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minigpt.train", description="Train MiniGPT from scratch.")
    p.add_argument("--preset", default="cpu-char", choices=sorted(PRESETS), help="model preset (default: cpu-char)")
    p.add_argument("--data", help="a text file to train on (default: tiny Shakespeare)")
    p.add_argument("--tokenizer", default="char", choices=TOKENIZERS,
                   help="char: the text's characters (nanoGPT's shakespeare_char); byte: 256 bytes; gpt2: GPT-2's BPE "
                        "(default: char)")
    for name, kind in MODEL_FLAGS.items():
        how = dict(action=argparse.BooleanOptionalAction) if kind is bool else dict(type=kind)
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                       help="model override (default: the preset's)", **how)
    for f in fields(TrainConfig):
        kind, flag = _flag_type(f), FLAG_NAMES.get(f.name, f.name)
        default = "out-<text>-<tokenizer>, e.g. out-shakespeare-char" if f.name == "out_dir" else f.default
        how = dict(action=argparse.BooleanOptionalAction) if kind is bool else dict(type=kind)
        p.add_argument("--" + flag.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS,
                       help=f"(default: {default})", **how)
    return p


def main(argv=None):
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    model_kw = {k: args[k] for k in (*MODEL_FLAGS, "block_size") if k in args}
    text_name = pathlib.Path(args["data"]).stem if args["data"] else "shakespeare"
    args.setdefault("out_dir", f"out-{text_name}-{args['tokenizer']}")
    try:
        cfg = TrainConfig(**{f.name: args[f.name] for f in fields(TrainConfig) if f.name in args})
    except ValueError as e:
        parser.error(str(e))
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
        print(f"threads: {choose_threads(model_params(model), cfg.threads).describe()}")
    result = train(model, train_ids, val_ids, cfg, extra={"tokenizer": tokenizer.to_dict(), "data": args["data"]})
    if rank_world()[0] == 0:
        print(f"step {cfg.max_iters}: val loss {result.final_val_loss:.4f}; {result.wall_time:.1f} s in all, "
              f"{result.step_time_ms:.1f} ms/step, {result.tokens_per_sec:,.0f} tokens/s; "
              f"checkpoint {result.checkpoint_path}")
    if started:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
