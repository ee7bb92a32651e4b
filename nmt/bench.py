"""`nmt bench`: training tokens/s over a steady window, decoding sentences/s, and the FLOP bound.

Tokens are real target pieces plus EOS (no padding), as the peers count them. The FLOP bound: a matrix product of
the model's own shapes, timed in the precision used, against the model's FLOPs per target token counted from its
shapes (training = 3x the forward pass); the fraction is how much of what this machine can do the training gets."""

from __future__ import annotations

import dataclasses
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nmt.batching import collate, plan_batches
from nmt.config import Config, load_config
from nmt.device import cpu_name, describe_cpu, precision_reason
from nmt.distributed import World
from nmt.model import gemm, kernels
from nmt.scoring import bleu
from nmt.translator import Translator, encode_sources


def flops_per_target_token(cfg: Config, tgt_vocab: int, src_per_tgt: float, mean_src_len: float) -> float:
    """Training FLOPs per target token: 3 x (decoder step + attention + projection + the encoder's share)."""
    m = cfg.model
    e, h = m.emb_dim, m.hidden_size
    first_in = e + (h if m.input_feed else 0)
    decoder = 2 * 4 * h * (first_in + h) + (m.layers - 1) * 2 * 4 * h * (2 * h)
    attention = 2 * 2 * mean_src_len * h + 2 * (2 * h) * h + (2 * h * h if m.attention == "general" else 0)
    generator = 2 * h * tgt_vocab
    d = h // 2
    encoder_per_src = 2 * (2 * 4 * d * (e + d)) + (m.layers - 1) * 2 * (2 * 4 * d * (2 * d + d))
    return 3.0 * (decoder + attention + generator + src_per_tgt * encoder_per_src)


def matmul_flops_per_second(cfg: Config, device: torch.device, precision: str, batch: int) -> float:
    """FLOP/s of the decoder's gate product (batch x 2H) @ (2H x 4H), the model's typical matrix product:
    the faster of `torch.mm` and oneDNN (on a CPU), each the best of several rounds, so that neither a
    slow library nor a disturbed moment lowers the bound."""
    h = cfg.model.hidden_size
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(batch, 2 * h, device=device, dtype=dtype)
    weight = torch.randn(4 * h, 2 * h, device=device, dtype=dtype)
    runs = [lambda: a @ weight.t()]
    if device.type == "cpu" and gemm.ONEDNN and (dtype == torch.float32 or gemm.ONEDNN_BF16):
        runs.append(lambda: gemm._onednn_product(a, weight))
    best = float("inf")
    for run in runs:
        for _ in range(20):
            run()
        for _ in range(5):
            _sync(device)
            started = time.perf_counter()
            for _ in range(40):
                run()
            _sync(device)
            best = min(best, (time.perf_counter() - started) / 40)
    return 2.0 * batch * 2 * h * 4 * h / best


def _sync(device: torch.device) -> None:
    torch.get_device_module(device).synchronize(device)  # on a CPU: nothing


def bench_training(trainer, warmup: int, steps: int) -> dict:
    data, cfg = trainer.data, trainer.cfg.train
    plan = plan_batches(data.train.src_lengths, data.train.tgt_lengths, batch_tokens=cfg.batch_tokens,
                        batch_sentences=cfg.batch_sentences, seed=cfg.seed, epoch=1)
    trainer.model.train()
    tokens, step_times = 0, []
    for index in range(warmup + steps):
        if index == warmup:
            _sync(trainer.device)
            window_start = time.perf_counter()
        started = time.perf_counter()
        batch = collate(data.train, plan[index % len(plan)]).to(trainer.device)
        trainer.train_step(batch)
        if index >= warmup:
            tokens += batch.n_tokens
            step_times.append(time.perf_counter() - started)
    _sync(trainer.device)
    seconds = time.perf_counter() - window_start
    return {"train_tokens_per_sec": tokens / seconds, "train_steps_per_sec": steps / seconds,
            "train_step_ms_median": 1000 * statistics.median(step_times)}


def bench_decoding(model, tokenizer, cfg: Config, lines: list[str], refs: list[str], device, precision) -> dict:
    sources = encode_sources(tokenizer, lines, cfg.decode.max_src_len)
    result = {}
    for name, beam in (("greedy", 1), ("beam5", 5)):
        _sync(device)
        started = time.perf_counter()  # the search step's weights are laid out inside the timing, as in use
        decode = dataclasses.replace(cfg.decode, beam_size=beam)
        hyps = Translator(model, tokenizer, decode, device=device, precision=precision).translate_ids(sources)
        _sync(device)
        seconds = time.perf_counter() - started
        result[f"{name}_sentences_per_sec"] = len(lines) / seconds
        result[f"{name}_bleu"] = bleu([tokenizer.tgt.decode(h[0].tokens) for h in hyps], refs)
    return result


def run_bench(args) -> dict:
    from nmt import checkpoint
    from nmt.train import Trainer

    cfg = load_config(args.config, args.overrides)
    if cfg.data.test_split is None:
        cfg.data.test_split = cfg.data.valid_split
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), World(), None)
    device, precision = trainer.device, trainer.precision
    train, test = trainer.data.train, trainer.data.test
    mean_tgt = float(train.tgt_lengths.mean()) + 1
    mean_src = float(train.src_lengths.mean()) + 1
    report = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "precision": precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "precision_choice": precision_reason(cfg.train.precision, precision, device),
        "parameters": trainer.model.num_parameters(),
        "batch": f"{cfg.train.batch_sentences} sentences" if cfg.train.batch_sentences
        else f"{cfg.train.batch_tokens} tokens",
    }
    n = min(args.decode_sentences, len(test))

    def decode(model, tokenizer) -> None:
        report.update(bench_decoding(model.eval(), tokenizer, cfg, test.src[:n], test.tgt[:n], device, precision))
        report["decode_sentences"] = n
        report["decoded_parameters"] = model.num_parameters()  # the checkpoint's model may not be the config's

    if args.checkpoint:
        # decoded first, in the state of the fresh process `nmt translate` runs in: after a training window
        # the allocator's and the caches' state slows decoding down
        started = time.perf_counter()
        loaded = checkpoint.load_for_inference(Path(args.checkpoint), device)
        report["checkpoint_load_sec"] = time.perf_counter() - started
        decode(loaded.model, loaded.tokenizer)
        del loaded
    if not args.skip_train:
        report.update(bench_training(trainer, args.warmup_steps, args.steps))
        flops_token = flops_per_target_token(cfg, len(trainer.tokenizer.tgt), mean_src / mean_tgt, mean_src)
        batch_rows = cfg.train.batch_sentences or max(1, cfg.train.batch_tokens // int(mean_tgt))
        peak = matmul_flops_per_second(cfg, device, precision, batch_rows)
        report.update(flops_per_target_token=flops_token, matmul_gflops=peak / 1e9,
                      achieved_gflops=report["train_tokens_per_sec"] * flops_token / 1e9)
        report["fraction_of_flop_bound"] = report["achieved_gflops"] / report["matmul_gflops"]
    if not args.checkpoint:
        decode(trainer.model, trainer.tokenizer)
    if device.type == "cpu":
        routes = gemm.routes()
        report.update(cpu=describe_cpu(), products=routes.describe(), product_timings_ms=routes.milliseconds,
                      recurrence_steps=trainer.computed_by["recurrence"] if trainer.model.decoder.compiled_steps
                      or not trainer.model.decoder.runs_recurrence else kernels.describe())
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        report["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return report
