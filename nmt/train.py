"""Training: SGD with gradient-norm clipping, validation, checkpoints, exact resume.

One step: forward (under autocast for bf16/fp16) -> summed NLL divided by the batch's sentences or tokens ->
backward -> (fp16: unscale) -> `clip_grad_norm_` on the float32 gradients, whose return value is the pre-clip norm
we log -> step, unless the loss or the norm is not finite. One host sync per step reads the loss and the norm.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import resource
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nmt import checkpoint
from nmt.batching import collate, plan_batches, shard
from nmt.config import Config
from nmt.data.prepare import PreparedData, prepare_on_each_node
from nmt.device import autocast, precision_reason, release_free_memory, resolve_device, resolve_precision
from nmt.distributed import World, any_rank, barrier
from nmt.errors import Diverged, NMTError
from nmt.interrupt import Interrupted, StopSignals
from nmt.loss import summed_nll
from nmt.metrics_log import MetricsLog
from nmt.model import Seq2Seq, gemm
from nmt.model.recurrence import check_compilable
from nmt.schedule import LRSchedule, budget_fraction
from nmt.scoring import bleu
from nmt.tokenizer import PAD, Tokenizer
from nmt.train_plan import TrainPlan
from nmt.translator import Translator

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, world: World, payload: dict | None,
                 data: PreparedData | None = None):
        """`payload`: a checkpoint to resume from; `data`: prepared data to use instead of `cfg.data` (as tests do)."""
        self.cfg, self.run_dir, self.world = cfg, run_dir, world
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(self.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        if self.device.type == "cpu":
            gemm.routes()  # a first run on a machine times the product routes: not inside the training budget
        self.data = data if data is not None else prepare_on_each_node(
            cfg, Tokenizer.from_state_dict(payload["tokenizer"]) if payload else None, world)
        self.tokenizer = self.data.tokenizer
        torch.manual_seed(cfg.train.seed)
        fused, compiled = cfg.train.fused_recurrence, cfg.train.compile is True
        fused = fused is True or compiled or (fused == "auto" and self.device.type == "cpu")
        if compiled:
            check_compilable(self.device)
        self.model = Seq2Seq(cfg.model, len(self.tokenizer.src), len(self.tokenizer.tgt),
                             fused_recurrence=fused, compiled_steps=compiled).to(self.device)
        # a first run on a machine builds the kernels here, before the clock starts
        self.computed_by = self.model.computed_by(self.device, self.precision)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.train_model = DistributedDataParallel(self.model, device_ids=ids) if world.distributed else self.model
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD if cfg.train.optimizer == "sgd" else torch.optim.Adam
        self.optimizer = optimizer(self.params, lr=cfg.train.lr)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.schedule = LRSchedule(cfg.train, self.optimizer)
        self.plan = TrainPlan(cfg.train)
        self.progress = checkpoint.restore_training(self, payload) if payload else checkpoint.Progress()
        self.saved_at = self.progress.elapsed  # training seconds at the last save
        self.metrics = MetricsLog(run_dir, enabled=world.is_main, truncate_after_step=self.progress.step)
        self.signals = StopSignals()
        self.last_validation_seconds: float | None = None  # how long this process's last validation took
        log.info("model: %s parameters; device %s, precision %s, %d thread(s), world size %d",
                 f"{self.model.num_parameters():,}", self.device,
                 precision_reason(cfg.train.precision, self.precision, self.device), torch.get_num_threads(),
                 world.size)

    def train_step(self, batch):
        """Returns (summed NLL, pre-clip gradient norm, whether the update was applied)."""
        cfg = self.cfg.train
        real = batch.tgt_out != PAD  # (B, T)
        with autocast(self.device, self.precision):
            logits = self.train_model(batch.src, batch.src_lengths, batch.tgt_in, real)  # (n_tokens, V)
        loss_sum = summed_nll(logits, batch.tgt_out[real], cfg.label_smoothing)
        loss = loss_sum / (batch.n_sentences if cfg.loss_norm == "sentences" else batch.n_tokens)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # the threshold applies to the true gradient
        norm = torch.nn.utils.clip_grad_norm_(self.params, math.inf if cfg.max_grad_norm is None else cfg.max_grad_norm)
        loss_value, norm_value = torch.stack([loss_sum.detach().float(), norm.detach().float()]).tolist()
        finite = math.isfinite(loss_value) and math.isfinite(norm_value)
        if self.scaler:
            self.scaler.step(self.optimizer)  # skips the update itself when a gradient is not finite
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value, finite

    def run(self) -> str:
        """Train until a budget, max_epochs or early stopping ends it; returns why it stopped."""
        progress, cfg, train = self.progress, self.cfg.train, self.data.train
        self.model.train()  # a Translator built on it before (tests, scripts) leaves it in eval mode
        self.metrics.write(step=progress.step, event="start", computed_by=self.computed_by)
        self.window = Counter(time=time.perf_counter())  # `_log_step`'s sums since its last record, and when it began
        with self.signals:
            stop = self._validate_if_due()  # a validation that a stop signal abandoned comes first
            while progress.epoch <= cfg.max_epochs:
                batches = shard(plan_batches(train.src_lengths, train.tgt_lengths, batch_tokens=cfg.batch_tokens,
                                             batch_sentences=cfg.batch_sentences, seed=cfg.seed, epoch=progress.epoch),
                                self.world.rank, self.world.size)
                stop = stop or self._train_epoch(batches)
                if progress.batch_in_epoch >= len(batches):  # also where a resumed run starts at an epoch's end
                    stop = self._end_epoch()
                if stop:
                    break
            if self.plan.validation("end", progress, self.last_validation_seconds).validate:
                self._validate()
        barrier(self.world)
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        log.info("training stopped: %s (step %d, %.1f minutes; peak memory of this process %s MiB)", stop,
                 progress.step, progress.elapsed / 60, f"{peak_mib:,.0f}")
        return stop

    def _train_epoch(self, batches: list) -> str | None:
        """A step on each of the epoch's batches left; why the run stops before the epoch's end, or None."""
        cfg, progress = self.cfg.train, self.progress
        bar = tqdm(total=len(batches), initial=progress.batch_in_epoch, desc=f"epoch {progress.epoch}", unit="batch",
                   disable=not (self.world.is_main and sys.stderr.isatty()), dynamic_ncols=True, mininterval=0.5)
        stop = None
        while progress.batch_in_epoch < len(batches):
            if any_rank(self.signals.signum is not None, self.world):
                self._interrupt()
            started = time.perf_counter()
            self.schedule.follow_budget(budget_fraction(
                cfg, progress.step, progress.elapsed, progress.epoch - 1 + progress.batch_in_epoch / len(batches)))
            batch = collate(self.data.train, batches[progress.batch_in_epoch]).to(self.device)
            progress.batch_in_epoch += 1
            try:
                nll, norm, applied = self.train_step(batch)
            except torch.cuda.OutOfMemoryError:
                del batch
                self._handle_oom()
                continue  # the batch is skipped
            progress.oom_batches = 0
            progress.step += 1
            progress.elapsed += time.perf_counter() - started
            bar.update(1)
            if applied:
                self._log_step(nll, norm, batch, bar)
            else:
                self._check_bad_step(nll, norm)
            if stop := self._validate_if_due():
                break
            if self.plan.save_due(progress, self.saved_at):
                self.save("last.pt")
            if progress.step % 100 == 0:  # hands freed memory back to the system
                release_free_memory()
        bar.close()
        return stop

    def _validate_if_due(self) -> str | None:
        """The validation `train.valid_every` asks for at this step; why the run stops here, or None."""
        if self.plan.validation("step", self.progress, self.last_validation_seconds).validate:
            self._validate()
        return self._stop_together(self.plan.stop(self.progress))

    def _end_epoch(self) -> str | None:
        """The epoch's summary, its validation, the schedule's epoch step and last.pt; why the run stops, or None."""
        progress = self.progress
        if progress.summarized_epoch != progress.epoch:  # not when resumed from a signal during its validation
            progress.summarized_epoch = progress.epoch
            fraction = progress.clipped_in_epoch / max(1, progress.steps_in_epoch)
            log.info("epoch %d done: %d steps, %.1f%% of them clipped", progress.epoch, progress.steps_in_epoch,
                     100 * fraction)
            self.metrics.write(step=progress.step, epoch=progress.epoch, event="epoch_end", clip_fraction=fraction)
            progress.clipped_in_epoch = progress.steps_in_epoch = 0
        decision = self.plan.validation("epoch_end", progress, self.last_validation_seconds)
        if decision.logged:
            log.info("%s", decision.why)
        if not any_rank(not decision.validate, self.world):  # all ranks alike: a validation waits for all of them
            self._validate()
        self.schedule.after_epoch(progress.epoch)
        progress.epoch += 1
        progress.batch_in_epoch = 0
        self.save("last.pt")
        return self._stop_together(self.plan.stop(progress))

    def _stop_together(self, stop: str | None) -> str | None:
        """Under torchrun each rank times `max_minutes` on its own clock, and one that stopped a step before the
        others would leave them waiting in the next collective: all stop where the first does."""
        minutes = self.cfg.train.max_minutes
        if self.world.distributed and minutes is not None and any_rank(stop is not None, self.world) and stop is None:
            return f"train.max_minutes={minutes} reached on another rank's clock"
        return stop

    def validate(self) -> dict:
        """valid_loss (the training loss per target token, teacher-forced), valid_ppl, and valid_bleu: the BLEU of
        the validation sources decoded with the validation beam; in eval mode (no dropout). A stop signal abandons
        it (`Interrupted`)."""
        data, device, precision = self.data, self.device, self.precision
        self.signals.abandon_now = True
        self.model.eval()
        try:
            total_nll, total_tokens = 0.0, 0
            plan = plan_batches(data.valid_ids.src_lengths, data.valid_ids.tgt_lengths, shuffle=False,
                                batch_tokens=self.cfg.train.batch_tokens, batch_sentences=None, seed=0, epoch=0)
            with torch.inference_mode(), autocast(device, precision):
                for indices in plan:
                    batch = collate(data.valid_ids, indices).to(device)
                    real = batch.tgt_out != PAD
                    logits = self.model(batch.src, batch.src_lengths, batch.tgt_in, real)
                    total_nll += summed_nll(logits, batch.tgt_out[real]).item()
                    total_tokens += batch.n_tokens
            decode = dataclasses.replace(self.cfg.decode, beam_size=self.cfg.decode.valid_beam_size)
            hypotheses = Translator(self.model, data.tokenizer, decode, device=device, precision=precision).translate(
                data.valid.src, progress=sys.stderr.isatty())  # beside the epoch's bar, gone when done
            valid_loss = total_nll / max(1, total_tokens)
            return {"valid_loss": valid_loss, "valid_ppl": math.exp(min(valid_loss, 100)),
                    "valid_bleu": bleu(hypotheses, data.valid.tgt)}
        finally:
            self.model.train()
            self.signals.abandon_now = False

    def _validate(self) -> None:
        """Validate on rank 0 and record it; every rank takes rank 0's lr and counters (in place: the training
        loop holds a reference to them) and counts the time in the budget."""
        started = time.perf_counter()
        if self.world.is_main:
            try:
                result = self.validate()
            except Interrupted:  # a signal during validation abandons it; the state is the last step's
                self._interrupt()
            self._record_validation(result)
        if self.world.distributed:
            box = [(self.schedule.lr, dataclasses.asdict(self.progress))]
            dist.broadcast_object_list(box, src=0)
            lr, progress = box[0]
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            vars(self.progress).update(progress)
        self.last_validation_seconds = time.perf_counter() - started
        self.progress.elapsed += self.last_validation_seconds

    def _record_validation(self, result: dict) -> None:
        """Patience's count, the schedule, the metrics and the log; last.pt, best.pt when better, the kept step's."""
        progress = self.progress
        self.schedule.after_validation(result["valid_ppl"])
        improved = result["valid_bleu"] > progress.best_bleu
        progress.best_bleu = result["valid_bleu"] if improved else progress.best_bleu
        progress.validations_without_improvement = 0 if improved else progress.validations_without_improvement + 1
        progress.validated_step = progress.step
        self.metrics.write(step=progress.step, epoch=progress.epoch, lr=self.schedule.lr, **result)
        log.info("validation at step %d: loss %.3f, ppl %.2f, BLEU %.2f%s", progress.step, result["valid_loss"],
                 result["valid_ppl"], result["valid_bleu"], " (best)" if improved else "")
        keep = self.cfg.train.keep_checkpoints
        self.save("last.pt", *(["best.pt"] if improved else []), *([f"step_{progress.step:08d}.pt"] if keep else []))
        for path in checkpoint.step_checkpoints(self.run_dir / "checkpoints")[:-keep] if keep else []:
            path.unlink(missing_ok=True)

    def save(self, *names: str) -> None:
        self.saved_at = self.progress.elapsed
        if self.world.is_main:
            payload = checkpoint.training_payload(self)
            for name in names:
                checkpoint.save(payload, self.run_dir / "checkpoints" / name)

    def _check_bad_step(self, loss: float, norm: float) -> None:
        train, progress = self.cfg.train, self.progress
        progress.bad_steps += 1
        progress.consecutive_bad_steps += 1
        self.metrics.write(step=progress.step, epoch=progress.epoch, event="non_finite", loss=loss, grad_norm=norm)
        # the loss is computed first: a finite loss with a non-finite norm points at the backward pass
        first = "the loss" if not math.isfinite(loss) else "the gradient norm"
        log.warning("step %d: %s is not finite (loss %s, norm %s); update skipped", progress.step, first, loss, norm)
        if progress.consecutive_bad_steps >= train.max_bad_steps:
            folder = self.run_dir / "checkpoints"
            saved = (f"the last good checkpoint in {folder} is intact" if any(folder.glob("*.pt"))
                     else "no checkpoint had been written yet")
            causes = (["no clipping (set train.max_grad_norm=5)"] if train.max_grad_norm is None else []) + [
                f"a learning rate too high for this data (train.lr={train.lr:g})",
                *(["fp16 overflow (use train.precision=bf16 or fp32)"] if self.precision == "fp16" else []),
                "corrupt input (check the data for very long or garbled lines)"]
            raise Diverged(f"{progress.consecutive_bad_steps} consecutive steps had a non-finite value, {first} first "
                           f"(up to step {progress.step}); training stopped; {saved}; likely causes, most likely "
                           f"first: {'; '.join(causes)}")

    def _handle_oom(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        progress = self.progress
        progress.oom_batches += 1
        self.metrics.write(step=progress.step, epoch=progress.epoch, event="out_of_memory")
        log.warning("step %d: out of GPU memory on a batch; skipped it", progress.step)
        if progress.oom_batches >= self.cfg.train.max_oom_batches:
            raise NMTError(f"{progress.oom_batches} consecutive batches ran out of GPU memory; "
                           f"lower train.batch_tokens (now {self.cfg.train.batch_tokens})")

    def _log_step(self, nll: float, norm: float, batch, bar) -> None:
        """Count an applied step in the epoch and the logging window; every `log_every` steps, log the window."""
        cfg, progress, window = self.cfg.train, self.progress, self.window
        progress.consecutive_bad_steps = 0
        clipped = cfg.max_grad_norm is not None and norm >= cfg.max_grad_norm
        progress.steps_in_epoch += 1
        progress.clipped_in_epoch += clipped
        window.update(nll=nll, tokens=batch.n_tokens, steps=1, clipped=clipped)  # a Counter: adds them
        if progress.step % cfg.log_every:
            return
        loss = window["nll"] / max(1, window["tokens"])
        tokens_per_sec = window["tokens"] * self.world.size / max(time.perf_counter() - window["time"], 1e-9)
        ppl = math.exp(min(loss, 100))
        clip_fraction = window["clipped"] / max(1, window["steps"])
        self.metrics.write(step=progress.step, epoch=progress.epoch, loss=loss, ppl=ppl, lr=self.schedule.lr,
                           grad_norm=norm, clipped=clipped, clip_fraction=clip_fraction, tokens_per_sec=tokens_per_sec,
                           batch_sentences=batch.n_sentences, batch_tokens=batch.n_tokens)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_sec:,.0f}", gnorm=f"{norm:.2f}",
                        lr=f"{self.schedule.lr:.3g}", refresh=False)
        if bar.disable and self.world.is_main:
            log.info("step %d | epoch %d | loss %.3f | ppl %.1f | lr %.3g | gnorm %.2f | clipped %.0f%% | %s tok/s",
                     progress.step, progress.epoch, loss, ppl, self.schedule.lr, norm, 100 * clip_fraction,
                     f"{tokens_per_sec:,.0f}")
        self.window = Counter(time=time.perf_counter())

    def _interrupt(self) -> NoReturn:
        signum = self.signals.signum
        self.save("last.pt")
        raise Interrupted(signum, f"{signal.Signals(signum).name} at step {self.progress.step}: saved "
                                  f"{self.run_dir}/checkpoints/last.pt; "
                                  f"continue with: nmt train --resume --run-dir {self.run_dir}")
