"""The translate and evaluate commands: files in, files out, line N for line N."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from nmt import checkpoint
from nmt.cli.parser import DECODING_FLAGS, check_flags
from nmt.config import DataConfig
from nmt.data.sources import load_splits
from nmt.data.text import count_text_lines, read_line_chunks, split_lines
from nmt.device import release_free_memory, resolve_device, resolve_precision
from nmt.errors import NMTError
from nmt.outputs import check_output, check_output_folder, replacing, write_lines, write_text
from nmt.scoring import score, score_files
from nmt.translator import Translator, format_nbest

log = logging.getLogger(__name__)


def load_translator(args) -> tuple[Translator, list[checkpoint.Loaded]]:
    """The --checkpoint model(s) on --device in --precision (resolved here, once, for translate, evaluate and serve),
    decoding with the first checkpoint's settings where no flag is given."""
    device = resolve_device(args.device, setting="--device")
    precision = resolve_precision(args.precision, device, setting="--precision", training=False)
    paths = args.checkpoint
    loaded = [checkpoint.load_for_inference(Path(path), device) for path in paths]
    first = loaded[0].tokenizer.state_dict()
    for path, other in zip(paths[1:], loaded[1:]):
        side = checkpoint.tokenizer_difference(other.tokenizer.state_dict(), first)
        if side:
            raise NMTError(f"{path}: its {side} differs from {paths[0]}'s; an ensemble's checkpoints must "
                           "share the tokenizer (train them on the same data with the same tokenizer settings)")
    flags = {key: getattr(args, key) for key in (flag[2:].replace("-", "_") for flag in DECODING_FLAGS)}
    decode = dataclasses.replace(loaded[0].config.decode, **{k: v for k, v in flags.items() if v is not None})
    return Translator([one.model for one in loaded], loaded[0].tokenizer, decode, device=device,
                      precision=precision), loaded


def _one_line(text: str) -> str:
    """A translation never spans lines, whatever the model emits."""
    return " ".join(text.splitlines())


def translate_command(args) -> None:
    check_flags(args)
    if args.output != "-":  # the outputs checked before any work
        check_output(args.output, reads=[*args.checkpoint] + ([args.input] if args.input != "-" else []),
                     overwrite=args.overwrite)
    plot_folder = check_output_folder(args.attention_plots, flag="--attention-plots") if args.attention_plots else None
    # a regular file is read twice: counted (and checked for UTF-8) first; a pipe (`<(zcat ...)`) once
    source = Path(args.input)
    pipe = args.input == "-" or (source.exists() and not source.is_file() and not source.is_dir())
    total = None if pipe else count_text_lines(source)
    interactive = args.input == "-" and sys.stdin.isatty() and args.output == "-"  # typed: line by line
    chunks = iter(()) if interactive else _input_chunks(args.input)
    first = next(chunks, [])
    plotted = args.plot_first if args.attention_plots else 0  # of the first chunk: its non-blank ones get heatmaps
    plots = {i: check_output(plot_folder / f"attention_{i + 1:04d}.png", flag="--attention-plots", folder_checked=True,
                             overwrite=args.overwrite) for i, line in enumerate(first[:plotted]) if line.strip()}
    translator, _ = load_translator(args)
    nbest, beam_size, tokenizer = args.nbest, translator.decode.beam_size, translator.tokenizer
    if not 1 <= nbest <= beam_size:
        raise NMTError(f"--nbest {nbest} must be between 1 and --beam-size {beam_size}")

    def run(lines: list[str], *, keep_attention: bool = False, progress=False):
        return translator.translate_ids(translator.encode(lines), nbest=nbest, keep_attention=keep_attention,
                                        progress=progress)

    def texts(hypotheses) -> list[str]:
        return format_nbest(hypotheses, tokenizer) if nbest > 1 else [
            tokenizer.tgt.decode(hyps[0].tokens) for hyps in hypotheses]

    if interactive:
        for line in sys.stdin:
            print("\n".join(map(_one_line, texts(run(split_lines(line) or [""])))), flush=True)
        return

    bar = tqdm(total=total, unit="sent", disable=args.output == "-" and sys.stdout.isatty(), dynamic_ncols=True)
    with contextlib.ExitStack() as stack:  # the file closes, then `replacing` renames it over the output
        out = sys.stdout if args.output == "-" else stack.enter_context(
            open(stack.enter_context(replacing(Path(args.output))), "w", encoding="utf-8", newline="\n"))
        for index, lines in enumerate(itertools.chain([first], chunks)):
            head = plotted if index == 0 else 0  # decoded keeping the attention the heatmaps draw
            hypotheses = run(lines[:head], keep_attention=True, progress=bar) + run(lines[head:], progress=bar)
            out.write("".join(_one_line(text) + "\n" for text in texts(hypotheses)))
            out.flush()
            release_free_memory()
            if index == 0 and plots:
                _draw_attention(plot_folder, plots, lines, hypotheses, translator)
    bar.close()


# lines sorted and batched together: translate's memory stays flat however long the input is
CHUNK_LINES = 100_000


def _input_chunks(source: str):
    """The input, `CHUNK_LINES` lines at a time; standard input as it arrives (invalid UTF-8 replaced there:
    a pipe cannot be read twice to find the line first)."""
    if source != "-":
        yield from read_line_chunks(Path(source), CHUNK_LINES)
        return
    while True:
        raw = list(itertools.islice(sys.stdin.buffer, CHUNK_LINES))
        if raw:
            yield split_lines(b"".join(raw).decode("utf-8", errors="replace"))
        if len(raw) < CHUNK_LINES:  # the end: a terminal's Ctrl-D is not sticky, so never read past it
            return


def _draw_attention(folder: Path, plots: dict[int, Path], lines: list[str], hypotheses,
                    translator: Translator) -> None:
    from nmt.plot import plot_attention

    tokenizer = translator.tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in plots.items():
        best = hypotheses[i][0]
        if best.attention is not None:
            plot_attention(best.attention, tokenizer.src.pieces(translator.encode([lines[i]])[0]) + ["</s>"],
                           tokenizer.tgt.pieces(best.tokens) + ["</s>"], path, title=f"line {i + 1}")
    log.info("attention plots written to %s", folder)


def evaluate_command(args) -> dict:
    if args.hyp:
        if not args.ref:
            raise NMTError("--hyp needs at least one --ref")
        return score_files(Path(args.hyp), [Path(r) for r in args.ref])
    if not (args.checkpoint and args.dataset):
        raise NMTError("give --hyp FILE --ref FILE, or --checkpoint CKPT --dataset NAME_OR_PATH")
    check_flags(args)
    ckpt = Path(args.checkpoint[0])
    out = Path(args.out) if args.out else (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent)
    check_output_folder(out, flag="--out")
    translator, loaded = load_translator(args)
    data_cfg = loaded[0].config.data
    cfg = DataConfig(dataset=args.dataset, dataset_config=args.dataset_config,
                     src_lang=args.src_lang or data_cfg.src_lang, tgt_lang=args.tgt_lang or data_cfg.tgt_lang)
    corpus = load_splits(cfg, [args.split])[0]
    beam_size = translator.decode.beam_size
    # named by checkpoint(s) and beam, so that it never replaces the run's own test.hyp.*, which results.json
    # describes (an ensemble's names are joined by +, cut to keep the file name short)
    stem = f"{args.split}.{'+'.join(Path(c).stem for c in args.checkpoint)[:100]}.beam{beam_size}"
    hyp_path, scores_path = (check_output(out / name, reads=args.checkpoint, flag="--out", folder_checked=True,
                                          overwrite=args.overwrite)
                             for name in (f"{stem}.hyp.{cfg.tgt_lang}", f"{stem}.scores.json"))
    hypotheses = translator.translate(corpus.src, progress=sys.stderr.isatty())
    out.mkdir(parents=True, exist_ok=True)
    write_lines(hyp_path, [_one_line(h) for h in hypotheses])
    result = score(hypotheses, [corpus.tgt])
    result.update(hypotheses=str(hyp_path), split=corpus.name, beam_size=beam_size)
    write_text(scores_path, json.dumps(result, indent=2) + "\n")
    log.info("hypotheses: %s", hyp_path)
    return result
