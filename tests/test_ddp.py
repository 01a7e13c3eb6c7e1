"""minigpt.trainer under DistributedDataParallel: two CPU processes (gloo) train exactly what one process
trains on the same global batch."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import corpus, tiny_gpt
from minigpt.trainer import TrainConfig, train

WORLD = 2
# global micro-batch 4 (2 per process), 2 micro-steps per optimizer step
CFG = dict(steps=4, batch_size=4, grad_accum_steps=2, block_size=16, eval_interval=0, eval_batches=2,
           warmup_steps=1, lr=1e-2, min_lr=1e-3, progress=False)


def _worker(rank, init_file, out_dir):
    # runs in each spawned process
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = tiny_gpt()
        cfg = TrainConfig(out=str(out_dir / "run"), metrics_path=str(out_dir / "metrics.jsonl"), **CFG)
        res = train(model, corpus(), corpus(), cfg)
        torch.save({"state": model.state_dict(), "losses": res.train_losses, "val": res.final_val_loss},
                   out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "pg_init"), tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name, t in ranks[0]["state"].items():
        assert torch.equal(t, ranks[1]["state"][name]), name  # DDP keeps the replicas bit-identical
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = tiny_gpt()
        res = train(single, corpus(), corpus(), TrainConfig(**CFG))
    finally:
        torch.set_num_threads(threads)
    # Adam divides by sqrt(v) + eps, so a parameter whose true gradient is ~0 (the key bias: softmax ignores a
    # constant per row) moves by float32 rounding noise scaled up to ~lr per step; hence atol in units of lr
    for name, t in single.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][name], t, rtol=1e-5, atol=1e-2 * CFG["lr"], msg=name)
    assert not torch.equal(single.transformer.h[0].mlp.c_fc.weight, tiny_gpt().transformer.h[0].mlp.c_fc.weight)
    assert ranks[0]["losses"] == pytest.approx(res.train_losses, rel=1e-5)  # the mean over both processes
    assert ranks[0]["val"] == pytest.approx(res.final_val_loss, rel=1e-5)
    # only rank 0 wrote: one checkpoint, one line per step
    assert (tmp_path / "run" / "ckpt.pt").is_file()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
