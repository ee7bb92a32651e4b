"""`nmt train | translate | evaluate | plot | bench | study`: parse, call, print."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from nmt.errors import NMTError

log = logging.getLogger("nmt")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (default: Multi30k en->de from the hub)")
    p.add_argument("--config", help="YAML config; default: the packaged configs/multi30k_en_de.yaml settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=0.5 (repeatable)")
    p.add_argument("--run-dir", help="where the run is written (default: $NMT_RUNS or runs/, then <config>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")


def _add_decoding_options(p) -> None:
    p.add_argument("--beam-size", type=int, help="beam size (1 = greedy); default: the checkpoint's decode.beam_size")
    p.add_argument("--length-penalty", type=float, help="GNMT alpha; 0 = raw log-probability")
    p.add_argument("--max-len-ratio", type=float, help="output pieces at most R x source pieces + 5")
    p.add_argument("--batch-tokens", type=int, help="source pieces per decoding batch")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision for decoding; auto: bf16 on a GPU or a CPU with native bfloat16")


def _add_translate(sub) -> None:
    p = sub.add_parser("translate", help="translate a file, one output line per input line")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", default="-", help="input text file, or - for standard input")
    p.add_argument("--output", default="-", help="output file, or - for standard output")
    p.add_argument("--nbest", type=int, default=1,
                   help="write K lines per input line: score<TAB>translation, best first")
    p.add_argument("--attention-plots", metavar="DIR", help="write one attention heatmap PNG per sentence")
    p.add_argument("--plot-first", type=int, default=10, metavar="N", help="plot only the first N sentences")
    _add_decoding_options(p)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="BLEU, chrF and TER of a hypothesis file, or of a checkpoint on a split")
    p.add_argument("--hyp", help="hypotheses, one line per reference line")
    p.add_argument("--ref", action="append", default=[], help="reference file (repeat for several references)")
    p.add_argument("--checkpoint", help="translate --dataset's --split with this checkpoint and score it")
    p.add_argument("--dataset", help="hub name or local folder, as data.dataset")
    p.add_argument("--dataset-config", help="hub configuration name")
    p.add_argument("--split", default="test")
    p.add_argument("--src-lang")
    p.add_argument("--tgt-lang")
    p.add_argument("--out", help="folder for the hypotheses and scores (default: the checkpoint's run)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_decoding_options(p)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw a run's curves from metrics.jsonl to PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmt", description="LSTM-attention neural machine translation")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_translate(sub)
    _add_evaluate(sub)
    _add_plot(sub)
    from nmt.bench import add_parser as add_bench
    from nmt.study import add_parser as add_study

    add_bench(sub)
    add_study(sub)
    return parser


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    for noisy in ("datasets", "huggingface_hub", "fsspec", "urllib3", "matplotlib", "sacrebleu"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def cmd_train(args) -> int:
    from nmt.runs import train

    results = train(args.config, args.overrides, args.run_dir, args.resume)
    if "test_bleu" in results:
        print(f"test BLEU {results['test_bleu']:.2f}  chrF {results['test_chrf']:.2f}  "
              f"({results['bleu_signature']})")
    return 0


def cmd_translate(args) -> int:
    from nmt.inference import translate_command

    return translate_command(args)


def cmd_evaluate(args) -> int:
    from nmt.inference import evaluate_command

    result = evaluate_command(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(result["bleu_text"])
        print(f"  signature: {result['bleu_signature']}")
        print(f"chrF2 = {result['chrf']:.2f}\n  signature: {result['chrf_signature']}")
        print(f"TER = {result['ter']:.2f}\n  signature: {result['ter_signature']}")
    return 0


def cmd_plot(args) -> int:
    from nmt.plot import plot_run

    print(plot_run(Path(args.run_dir), Path(args.out) if args.out else None))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    handlers = {"train": cmd_train, "translate": cmd_translate, "evaluate": cmd_evaluate, "plot": cmd_plot}
    if args.command == "bench":
        from nmt.bench import command as handler
    elif args.command == "study":
        from nmt.study import command as handler
    else:
        handler = handlers[args.command]
    try:
        return handler(args)
    except NMTError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - only Interrupted is expected here
        from nmt.interrupt import Interrupted

        if isinstance(error, Interrupted):
            print(str(error) or "interrupted", file=sys.stderr)
            return 128 + error.signum
        if args.debug or os.environ.get("NMT_DEBUG"):
            raise
        print(f"error: {type(error).__name__}: {error} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
