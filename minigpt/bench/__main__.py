"""`python -m minigpt.bench`: what LoRA and QLoRA save, measured on your own machine (see minigpt.bench.runner)."""

import argparse
import functools
import sys

from minigpt.bench.runner import SECTIONS, BenchConfig, _default_threads, run
from minigpt.cli import one_line_errors

INTERRUPTED = "interrupted: nothing was written (the JSON file is written once, after the last section)"


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minigpt.bench", description=__doc__.split("\n")[0])
    p.add_argument("--sections", default=",".join(map(str, SECTIONS)), metavar="LIST",
                   help="comma-separated section numbers, e.g. 1,4 (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke test)")
    p.add_argument("--threads", type=int, default=_default_threads(), metavar="N",
                   help="torch threads, at most the usable cores (default: all of them)")
    p.add_argument("--warmup", type=int, default=None, metavar="N",
                   help="untimed calls before timing (default: 3; 1 with --quick)")
    p.add_argument("--repeats", type=int, default=None, metavar="N", help="timed repeats (default: 30; 3 with --quick)")
    p.add_argument("--out", default="bench.json", metavar="FILE", help="where to write the JSON results (default: bench.json)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of model weights and batches (default: 0)")
    p.add_argument("--timeout", type=int, default=1200, metavar="S",
                   help="seconds allowed to each subprocess (default: 1200)")
    return p


def config_from(a):
    """The BenchConfig of parsed arguments `a`."""
    try:
        sections = tuple(int(s) for s in a.sections.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--sections={a.sections!r}: give numbers from {sorted(SECTIONS)}, e.g. 1,4") from None
    return BenchConfig(sections=sections, quick=a.quick, threads=a.threads, warmup=a.warmup,
                       repeats=a.repeats, out=a.out, seed=a.seed, timeout=a.timeout)


def parse_args(argv=None):
    return config_from(build_parser().parse_args(argv))


def main(argv=None):
    args = build_parser().parse_args(argv)
    with one_line_errors(INTERRUPTED):
        cfg = config_from(args)
        if cfg.threads < args.threads:
            print(f"note: --threads {args.threads} is more than the {cfg.threads} usable cores; using {cfg.threads}",
                  file=sys.stderr)
        run(cfg, emit=functools.partial(print, flush=True))
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main()
