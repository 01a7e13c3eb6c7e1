"""Sample text from a trained MiniGPT checkpoint.

    python -m minigpt.sample --ckpt out-shakespeare-char --prompt "ROMEO:" --max-new-tokens 500 \
        --temperature 0.8 --top-k 200 --seed 1337

The checkpoint (written by minigpt.train) carries the model config and, in its `extra`, the tokenizer
description, so nothing else is needed. Sampling draws from a seeded torch.Generator: the same
checkpoint, prompt, settings and seed give the same text.
"""

import argparse
import sys

import torch

from minigpt.checkpoint import load_checkpoint, read_checkpoint
from minigpt.device import DEVICES, autocast, pick_device
from minigpt.model import GPT, GPTConfig
from minigpt.threads import fitted_threads
from minigpt.tokenizer import tokenizer_from_dict


def load_model(ckpt, device="cpu"):
    """Rebuild (model in eval mode, tokenizer) from a checkpoint file or run folder.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: unreadable checkpoint, one holding only trainable parameters (its base model is not
            in the file), or one without a model config or tokenizer description.
    """
    data = read_checkpoint(ckpt)
    if data["trainable_only"]:
        raise ValueError(f"{ckpt}: holds only the trainable parameters; load its base model, then load_checkpoint")
    if not data["model_config"] or "tokenizer" not in data["extra"]:
        raise ValueError(f"{ckpt}: no model config or tokenizer description to rebuild the model from")
    model = GPT(GPTConfig(**data["model_config"]))
    load_checkpoint(data, model)
    return model.to(device).eval(), tokenizer_from_dict(data["extra"]["tokenizer"])


def sample(model, tokenizer, prompt, max_new_tokens, temperature=1.0, top_k=None, seed=1337, num_samples=1):
    """Continue `prompt` num_samples times; returns the texts, each with its prompt in front.

    Raises:
        ValueError: an empty prompt (the model needs at least one token to condition on), or bad settings
            (see GPT.generate).
    """
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("prompt is empty; give at least one character (nanoGPT's default is a newline)")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    texts = []
    for _ in range(num_samples):  # one generator for all: sample i depends only on the seed and i
        with autocast(device):
            out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
        texts.append(tokenizer.decode(out[0].tolist()))
    return texts


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minigpt.sample", description="Sample from a MiniGPT checkpoint.")
    p.add_argument("--ckpt", required=True, help="run folder holding ckpt.pt, or the .pt file")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; < 1 sharper, > 1 flatter")
    p.add_argument("--top-k", type=int, default=200, help="keep the k most likely tokens; 0 = all")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: fitted to the model's size)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    model, tokenizer = load_model(args.ckpt, pick_device(args.device))
    with fitted_threads(model, args.threads) as choice:
        print(f"threads: {choice.describe()}", file=sys.stderr)  # stdout holds only the samples
        texts = sample(model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k or None, seed=args.seed, num_samples=args.num_samples)
    print("\n---------------\n".join(texts))
    return texts


if __name__ == "__main__":
    main()
