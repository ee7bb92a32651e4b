"""The end of a run: the best checkpoint translates the test split; results.json records the scores."""

from __future__ import annotations

import json
import logging

from nmt import checkpoint
from nmt.evaluate import score
from nmt.translate import translate_lines

log = logging.getLogger(__name__)


def final_test_evaluation(trainer, stop_reason: str, wall_seconds: float) -> dict:
    cfg, run_dir, progress = trainer.cfg, trainer.run_dir, trainer.progress
    results = {
        "steps": progress.step,
        "epochs_completed": progress.epoch - 1,
        "train_minutes": round(progress.elapsed / 60, 2),
        "wall_minutes": round(wall_seconds / 60, 2),
        "stopped": stop_reason,
        "best_valid_bleu": progress.best_bleu,
        "non_finite_steps": progress.bad_steps,
        "parameters": trainer.model.num_parameters(),
        "device": str(trainer.device),
        "precision": trainer.precision,
    }
    if trainer.device.type == "cuda":
        import torch

        results["gpu"] = torch.cuda.get_device_name(trainer.device)
        results["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(trainer.device) / 2**20)
    test = trainer.data.test
    if test is not None:
        best = run_dir / "checkpoints" / "best.pt"
        trainer.model.load_state_dict(checkpoint.load(best)["model"])
        decode = cfg.decode
        hypotheses = translate_lines(
            trainer.model, trainer.tokenizer, test.src, max_len=decode.max_src_len, device=trainer.device,
            beam_size=decode.beam_size, alpha=decode.length_penalty, max_len_ratio=decode.max_len_ratio,
            batch_tokens=decode.batch_tokens,  # float32, as `nmt translate` decodes by default: the same BLEU
        )
        hyp_path = run_dir / f"test.hyp.{cfg.data.tgt_lang}"
        hyp_path.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
        scores = score(hypotheses, [test.tgt])
        results.update({
            "test_split": test.name, "checkpoint": str(best), "beam_size": decode.beam_size,
            "length_penalty": decode.length_penalty, "hypotheses": str(hyp_path),
            "test_bleu": scores["bleu"], "test_chrf": scores["chrf"], "test_ter": scores["ter"],
            "bleu_signature": scores["bleu_signature"], "chrf_signature": scores["chrf_signature"],
            "ter_signature": scores["ter_signature"],
        })
        log.info("test %s: %s", test.name, scores["bleu_text"])
        log.info("BLEU signature: %s", scores["bleu_signature"])
        log.info("chrF2 = %.2f  (%s)", scores["chrf"], scores["chrf_signature"])
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
