"""Sample text from anything a run writes: a training checkpoint, a fine-tune run folder, an adapter, GPT-2.

    python -m minigpt.sample out-shakespeare-char --prompt "ROMEO:" --max-new-tokens 500 --seed 1337
    python -m minigpt.sample runs/finetune-lora                  # the merged model, or base + adapter/
    python -m minigpt.sample runs/finetune-lora/adapter --base gpt2   # a PEFT adapter on its base
    python -m minigpt.sample gpt2 --prompt "Hello"               # a GPT-2 name or GPT-2-layout folder

minigpt.sources finds the model and its tokenizer from what the source holds. Sampling draws from a
seeded torch.Generator: the same model, prompt, settings and seed give the same text.
"""

import argparse
import sys

import torch

from lora.checks import check_int
from minigpt.cli import one_line_errors
from minigpt.device import DEVICES, autocast, pick_device
from minigpt.generation import check_sampling
from minigpt.sources import KINDS, load_model
from minigpt.threads import fitted_threads, user_threads
from minigpt.trainer import check_seed

__all__ = ["load_model", "sample", "main"]


def sample(model, tokenizer, prompt, max_new_tokens, temperature=1.0, top_k=None, seed=1337, num_samples=1):
    """Continue `prompt` num_samples times; returns the texts, each with its prompt in front.

    Raises:
        ValueError: an empty prompt (the model needs at least one token to condition on), num_samples
            below 1, a seed outside [0, 2^63), or bad settings (see GPT.generate); all before sampling.
    """
    check_sampling(max_new_tokens, temperature, top_k)
    check_int("num_samples", num_samples)
    check_seed("seed", seed)
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
    p = argparse.ArgumentParser(prog="python -m minigpt.sample", description="Sample text from a trained model.",
                                epilog="SOURCE is " + "; ".join(KINDS) + ".")
    p.add_argument("source", nargs="?", metavar="SOURCE", help="what to sample from (see below)")
    p.add_argument("--ckpt", dest="ckpt", metavar="SOURCE", help="the same as SOURCE (kept for older scripts)")
    p.add_argument("--base", metavar="SOURCE", help="an adapter's base (default: the adapter's base_model_name_or_path)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500, metavar="N", help="tokens to sample (default: 500)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="X",
                   help="0 = greedy, else at least 1e-6; < 1 sharper, > 1 flatter (default: 0.8)")
    p.add_argument("--top-k", type=int, default=200, metavar="K", help="keep the k most likely tokens; 0 = all (default: 200)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples, one generator for all (default: 1)")
    p.add_argument("--seed", type=int, default=1337, metavar="N", help="seed of the sampling generator (default: 1337)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to run (default: auto)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads, at most the usable cores (default: $OMP_NUM_THREADS, else one per free core)")
    return p


def check_args(args):
    """Every flag checked before the model is loaded; returns top_k as generate takes it (None = all)."""
    if args.top_k < 0:
        raise ValueError(f"top_k={args.top_k}: must be a positive integer, or 0 for every token")
    top_k = args.top_k or None
    check_sampling(args.max_new_tokens, args.temperature, top_k)
    check_int("num_samples", args.num_samples)
    check_seed("seed", args.seed)
    if not args.prompt:
        raise ValueError("prompt is empty; give at least one character (nanoGPT's default is a newline)")
    user_threads(args.threads)  # --threads and OMP_NUM_THREADS
    return top_k


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.source is None) == (args.ckpt is None):
        parser.error("give one SOURCE to sample from")
    with one_line_errors():
        top_k = check_args(args)
        model, tokenizer = load_model(args.source or args.ckpt, base=args.base, device=pick_device(args.device))
        tokenizer.encode(args.prompt)  # a character the vocabulary lacks is refused before anything is printed
        with fitted_threads(args.threads) as choice:
            print(f"threads: {choice.describe()}", file=sys.stderr)  # stdout holds only the samples
            texts = sample(model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature,
                           top_k=top_k, seed=args.seed, num_samples=args.num_samples)
    print("\n---------------\n".join(texts))
    return texts


if __name__ == "__main__":
    main()
