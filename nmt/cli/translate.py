"""The translate and evaluate commands: files in, files out, line N for line N."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from nmt import checkpoint
from nmt.config import DataConfig
from nmt.data.sources import load_splits, read_text_lines
from nmt.device import resolve_device, resolve_precision
from nmt.errors import NMTError
from nmt.scoring import score, score_files
from nmt.translate import Translator, format_nbest

log = logging.getLogger(__name__)


def _translator(args, loaded, device) -> Translator:
    """The checkpoint's model with its decoding settings, overridden by the command line's."""
    decode = loaded.config.decode
    precision = resolve_precision(args.precision, device, setting="--precision", training=False)
    beam_size = args.beam_size or decode.beam_size
    if beam_size < 1:
        raise NMTError("--beam-size must be at least 1")
    return Translator(
        loaded.model, loaded.tokenizer, device=device, max_len=decode.max_src_len, beam_size=beam_size,
        alpha=decode.length_penalty if args.length_penalty is None else args.length_penalty,
        max_len_ratio=args.max_len_ratio or decode.max_len_ratio,
        batch_tokens=args.batch_tokens or decode.batch_tokens, precision=precision,
    )


def _write_atomically(path: Path, lines: list[str]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise NMTError(f"{path}: cannot write ({error.strerror})") from None


def _one_line(text: str) -> str:
    """A translation never spans lines, whatever the model emits."""
    return " ".join(text.splitlines())


def translate_command(args) -> int:
    device = resolve_device(args.device)
    loaded = checkpoint.load_for_inference(Path(args.checkpoint), device)
    translator = _translator(args, loaded, device)
    nbest = args.nbest
    if not 1 <= nbest <= translator.beam_size:
        raise NMTError(f"--nbest {nbest} must be between 1 and --beam-size {translator.beam_size}")
    tokenizer = loaded.tokenizer
    keep_attention = bool(args.attention_plots)

    def run(lines: list[str], progress: bool):
        return translator.translate_ids(translator.encode(lines), nbest=nbest, keep_attention=keep_attention,
                                        progress=progress)

    if args.input == "-" and sys.stdin.isatty():  # typed at a terminal: answer line by line
        for line in sys.stdin:
            hypotheses = run([line.rstrip("\n")], progress=False)
            out = format_nbest(hypotheses, tokenizer) if nbest > 1 else [tokenizer.tgt.decode(hypotheses[0][0].tokens)]
            print("\n".join(map(_one_line, out)), flush=True)
        return 0

    if args.input == "-":
        lines = sys.stdin.buffer.read().decode("utf-8", errors="replace")
        lines = lines[:-1].split("\n") if lines.endswith("\n") else (lines.split("\n") if lines else [])
        lines = [line.rstrip("\r") for line in lines]
    else:
        lines = read_text_lines(Path(args.input))
    hypotheses = run(lines, progress=args.output != "-" or not sys.stdout.isatty())
    if nbest > 1:
        out = format_nbest(hypotheses, tokenizer)
    else:
        out = [tokenizer.tgt.decode(hyps[0].tokens) for hyps in hypotheses]
    out = [_one_line(text) for text in out]
    if args.output == "-":
        sys.stdout.write("".join(line + "\n" for line in out))
        sys.stdout.flush()
    else:
        _write_atomically(Path(args.output), out)
    if keep_attention:
        from nmt.plot import plot_attention

        folder = Path(args.attention_plots)
        folder.mkdir(parents=True, exist_ok=True)
        for i, (line, hyps) in enumerate(zip(lines[: args.plot_first], hypotheses)):
            best = hyps[0]
            if best.attention is None or not line.strip():
                continue
            src_ids = translator.encode([line])[0]
            plot_attention(best.attention, tokenizer.src.pieces(src_ids) + ["</s>"],
                           tokenizer.tgt.pieces(best.tokens) + ["</s>"], folder / f"attention_{i + 1:04d}.png",
                           title=f"line {i + 1}")
        log.info("attention plots written to %s", folder)
    return 0


def evaluate_command(args) -> dict:
    if args.hyp:
        if not args.ref:
            raise NMTError("--hyp needs at least one --ref")
        return score_files(Path(args.hyp), [Path(r) for r in args.ref])
    if not (args.checkpoint and args.dataset):
        raise NMTError("give --hyp FILE --ref FILE, or --checkpoint CKPT --dataset NAME_OR_PATH")
    device = resolve_device(args.device)
    loaded = checkpoint.load_for_inference(Path(args.checkpoint), device)
    data_cfg = loaded.config.data
    cfg = DataConfig(dataset=args.dataset, dataset_config=args.dataset_config,
                     src_lang=args.src_lang or data_cfg.src_lang, tgt_lang=args.tgt_lang or data_cfg.tgt_lang)
    corpus = load_splits(cfg, [args.split])[0]
    translator = _translator(args, loaded, device)
    hypotheses = translator.translate(corpus.src, progress=sys.stderr.isatty())
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent)
    out.mkdir(parents=True, exist_ok=True)
    hyp_path = out / f"{args.split}.hyp.{cfg.tgt_lang}"
    _write_atomically(hyp_path, [_one_line(h) for h in hypotheses])
    result = score(hypotheses, [corpus.tgt])
    result.update(hypotheses=str(hyp_path), split=corpus.name, beam_size=translator.beam_size)
    import json

    (out / f"{args.split}.scores.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info("hypotheses: %s", hyp_path)
    return result
