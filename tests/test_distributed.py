"""Two processes with the gloo backend on the CPU, as torchrun would start them."""

import logging
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from nmt.config import load_config
from nmt.metrics_log import read_metrics
from nmt.tokenizer import PAD
from tests.conftest import TINY_CONFIG

STEPS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(rank: int, world_size: int, port: int, out: str, batch_sentences: int) -> None:
    from nmt.distributed import World, init_world, shutdown
    from nmt.train import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    cfg = load_config(TINY_CONFIG, ["train.threads=1", f"train.max_steps={STEPS}", "train.log_every=1",
                                    f"train.batch_sentences={batch_sentences}", "data.test_split=null"])
    world = init_world("cpu") if world_size > 1 else World()
    run_dir = os.path.join(out, "run")
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    trainer = Trainer(cfg, __import__("pathlib").Path(run_dir), world, None)
    trainer.run()
    torch.save(trainer.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    shutdown(world)


@pytest.mark.slow
def test_two_gloo_processes_stay_identical_through_a_run(tmp_path):
    """Forty steps of the trainer on two processes: every weight identical on both ranks at the end, and a
    loss logged at every step. (Whether the averaged update is the right one is the next test's: the loss
    curves of two such runs are no check, as SGD at lr 1 on the tiny model spikes where tiny rounding
    differences put it.)"""
    two = tmp_path / "two"
    two.mkdir()
    mp.spawn(_train, args=(2, _free_port(), str(two), 10), nprocs=2, join=True)
    rank0, rank1 = torch.load(two / "rank0.pt"), torch.load(two / "rank1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    losses = [r["loss"] for r in read_metrics(two / "run" / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)


def _batch():
    """Eight pairs of different lengths, right-padded as `collate` pads them."""
    generator = torch.Generator().manual_seed(5)
    src_lengths, tgt_lengths = torch.tensor([7, 3, 5, 7, 2, 6, 4, 7]), torch.tensor([6, 2, 4, 5, 6, 3, 1, 6])
    src = torch.randint(4, 50, (8, 7), generator=generator)
    tgt = torch.randint(4, 60, (8, 7), generator=generator)
    src[torch.arange(7) >= src_lengths.unsqueeze(1)] = PAD
    tgt[torch.arange(7) >= tgt_lengths.unsqueeze(1)] = PAD
    return src, src_lengths, tgt[:, :-1], tgt[:, 1:]


def _model():
    from nmt.config import ModelConfig
    from nmt.model import Seq2Seq

    torch.manual_seed(0)  # the same weights everywhere; dropout 0, as ranks draw other masks than one process
    return Seq2Seq(ModelConfig(emb_dim=16, hidden_size=24, layers=2, dropout=0.0), 50, 60,
                   fused_recurrence=True).train()


def _sentence_mean_loss(model, src, src_lengths, tgt_in, tgt_out):
    from nmt.loss import summed_nll

    real = tgt_out != PAD
    return summed_nll(model(src, src_lengths, tgt_in, real), tgt_out[real]) / len(src)


def _ddp_gradients(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    half = slice(4 * rank, 4 * rank + 4)  # each rank its four pairs, as the trainer normalizes them
    _sentence_mean_loss(model, *(x[half] for x in _batch())).backward()
    if rank == 0:
        torch.save({name: p.grad for name, p in model.module.named_parameters()}, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_average_to_the_one_process_gradient(tmp_path):
    """DDP over two ranks, each with half of a batch, gives every parameter the gradient one process computes
    on the whole batch: the CPU paths (padded encoder, fused recurrence, the loss) hold under DDP."""
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_gradients, args=(_free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out)
    model = _model()
    _sentence_mean_loss(model, *_batch()).backward()
    for name, p in model.named_parameters():
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(ddp[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("rank, level", [(0, logging.NOTSET), (1, logging.WARNING)])
def test_only_rank_0_logs_the_runs_progress(rank, level, monkeypatch):
    """Under torchrun every rank runs the same code: the others' info lines (epoch ends, the model, the
    kernels built) would repeat rank 0's, out of step. Their warnings and errors still show."""
    import torch.distributed as dist

    from nmt.distributed import init_world

    logger, before = logging.getLogger("nmt"), logging.getLogger("nmt").level
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    try:
        world = init_world("cpu")
        assert (world.rank, world.size, world.is_main) == (rank, 2, rank == 0)
        assert logger.level == level
    finally:
        logger.setLevel(before)


def test_ranks_stop_together_where_the_first_ranks_clock_ends_the_budget(tmp_path, monkeypatch):
    """Each rank times max_minutes itself: a rank whose clock has not run out stops with the one whose has,
    instead of waiting alone in the next collective."""
    from nmt import train
    from nmt.config import load_config
    from nmt.distributed import World
    from tests.conftest import TINY_CONFIG

    trainer = train.Trainer(load_config(TINY_CONFIG, ["train.max_minutes=5"]), tmp_path, World(), None)
    asked = []
    monkeypatch.setattr(train, "any_rank", lambda flag, world: asked.append(flag) or True)  # another rank stops
    assert trainer._stop_together(None) is None and not asked  # one process: nothing to agree on
    trainer.world = World(rank=1, local_rank=1, size=2)
    assert trainer._stop_together(None) == "train.max_minutes=5.0 reached on another rank's clock"
    assert trainer._stop_together("train.max_minutes=5.0 reached") == "train.max_minutes=5.0 reached"
    assert asked == [False, True]
    trainer.cfg.train.max_minutes = None  # steps and epochs are counted alike on every rank: no collective
    assert trainer._stop_together(None) is None and asked == [False, True]
