"""The one command-line parser of every command, and the allowed range of every number it reads."""

from __future__ import annotations

import argparse
import functools

from nmt.config import AT_LEAST_0, AT_LEAST_1, DECODE_RANGES, POSITIVE, check_range

DECODING_FLAGS = ("--beam-size", "--length-penalty", "--max-len-ratio", "--batch-tokens")
_UP_TO_A_DAY = ("above 0 and at most 86400 (a day)", lambda v: 0 < v <= 86_400)
FLAG_RANGES = {
    **{flag: DECODE_RANGES[flag[2:].replace("-", "_")] for flag in DECODING_FLAGS},
    "--nbest": AT_LEAST_1, "--plot-first": ("between 0 and 1000", lambda v: 0 <= v <= 1000),
    "--max-texts": AT_LEAST_1, "--max-chars": AT_LEAST_1, "--max-queue": AT_LEAST_1, "--max-connections": AT_LEAST_1,
    "--port": ("between 1 and 65535", lambda v: 1 <= v <= 65535),
    "--max-wait-ms": ("at least 0 and at most 10000", lambda v: 0 <= v <= 10_000),
    "--timeout": _UP_TO_A_DAY, "--client-timeout": _UP_TO_A_DAY, "--keep-alive": _UP_TO_A_DAY,
    "--warmup-steps": AT_LEAST_0, "--steps": AT_LEAST_1, "--decode-sentences": AT_LEAST_1, "--minutes": POSITIVE,
    "--clean": ("a number of days, 0 or more", lambda v: v >= 0),
}


def check_flags(args) -> None:
    """Before any work: a number given on the command line is used as given, so it must be in range."""
    for flag, rule in FLAG_RANGES.items():
        value = vars(args).get(flag[2:].replace("-", "_"))  # None (passes): not a flag of this command
        check_range(f"{flag} {format(value, 'g') if isinstance(value, float) else value}", value, rule)

# every command's parser: --debug after the command as well (`nmt plot RUN --debug`, `scripts/train.py --debug`);
# SUPPRESS keeps a `nmt --debug plot RUN` from being reset by the command's default
_DEBUG = argparse.ArgumentParser(add_help=False)
_DEBUG.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
_COMMAND = functools.partial(argparse.ArgumentParser, parents=[_DEBUG])


class _Version(argparse.Action):
    """`nmt --version`: versions, device and precision (imported only when asked: torch is slow to load)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from nmt.device import describe_machine

        print(describe_machine())
        parser.exit()


def _add_overwrite(p, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} even if nmt did not write it (by "
                   "default only nmt's own unchanged output is replaced)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (default: Multi30k en->de from the hub)")
    p.add_argument("--config", help="YAML config; default: the packaged configs/multi30k_en_de.yaml settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=0.5 (repeatable)")
    p.add_argument("--run-dir", help="where the run is written (default: $NMT_RUNS or runs/, then <config>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize the training data into the cache ahead of training (train does it "
                       "too when needed)")
    p.add_argument("--config", help="the YAML config the training run will use")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, as for train (repeatable)")
    p.add_argument("--clean", type=float, metavar="DAYS",
                   help="instead of preparing: remove the prepared data no run used for DAYS days, partial folders "
                        "of dead builds and damaged cache entries set aside as long ago, and print what it frees")


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
    p.add_argument("--checkpoint", required=True, action="append",
                   help="a checkpoint; give several for an ensemble (log-probabilities averaged at every step)")
    p.add_argument("--input", default="-", help="input text file, or - for standard input")
    p.add_argument("--output", default="-", help="output file, or - for standard output")
    p.add_argument("--nbest", type=int, default=1,
                   help="write K lines per input line: score<TAB>translation, best first")
    p.add_argument("--attention-plots", metavar="DIR", help="write one attention heatmap PNG per sentence")
    p.add_argument("--plot-first", type=int, default=10, metavar="N", help="plot only the first N sentences")
    _add_overwrite(p, "an existing --output file or attention plot")
    _add_decoding_options(p)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP API and a web page over a checkpoint (or an ensemble)")
    p.add_argument("--checkpoint", required=True, action="append", help="a checkpoint; several: an ensemble")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="on an idle server, how long the first sentence waits for others to start with it "
                        "(a busy server adds new sentences to the running batch at its next step)")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request")
    p.add_argument("--max-chars", type=int, default=5000, help="characters per request")
    p.add_argument("--max-queue", type=int, default=512, help="sentences waiting; beyond it: 503")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait; beyond it: 504")
    p.add_argument("--client-timeout", type=float, default=10.0, help="seconds a client has to send a request's "
                   "headers and body; beyond it the connection is closed (or answered 408)")
    p.add_argument("--keep-alive", type=float, default=5.0, help="seconds an idle connection is kept open")
    p.add_argument("--max-connections", type=int, default=1000,
                   help="open connections; a new one beyond it is closed at once")
    p.add_argument("--expose-config", action="store_true", help="show the training config (with its host paths) "
                   "at /info; by default only what a client needs")
    _add_decoding_options(p)


def _add_average(sub) -> None:
    p = sub.add_parser("average", help="average the weights of checkpoints of one model into a new checkpoint")
    p.add_argument("checkpoints", nargs="*", metavar="CKPT", help="checkpoints to average")
    p.add_argument("--last", type=int, metavar="N",
                   help="instead: the last N step_*.pt of --run-dir (train with train.keep_checkpoints=N)")
    p.add_argument("--run-dir", help="the run whose kept checkpoints --last takes")
    p.add_argument("--out", required=True, help="the averaged checkpoint to write (never one of the inputs)")
    _add_overwrite(p, "an existing --out file")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="BLEU, chrF and TER of a hypothesis file, or of a checkpoint on a split")
    p.add_argument("--hyp", help="hypotheses, one line per reference line")
    p.add_argument("--ref", action="append", default=[], help="reference file (repeat for several references)")
    p.add_argument("--checkpoint", action="append",
                   help="translate --dataset's --split with this checkpoint and score it (several: an ensemble)")
    p.add_argument("--dataset", help="hub name or local folder, as data.dataset")
    p.add_argument("--dataset-config", help="hub configuration name")
    p.add_argument("--split", default="test")
    p.add_argument("--src-lang")
    p.add_argument("--tgt-lang")
    p.add_argument("--out", help="folder for the hypotheses and scores (default: the checkpoint's run)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_overwrite(p, "existing hypotheses and scores files in --out")
    _add_decoding_options(p)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw a run's curves from metrics.jsonl to PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    _add_overwrite(p, "an existing PNG")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure training tokens/s, decoding sentences/s and the FLOP bound")
    p.add_argument("--config", help="YAML config (default: the packaged default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--steps", type=int, default=300, help="timed training steps after the warm-up")
    p.add_argument("--checkpoint", help="decode with this trained checkpoint (its lengths are realistic)")
    p.add_argument("--decode-sentences", type=int, default=1000, help="test sentences to decode")
    p.add_argument("--skip-train", action="store_true", help="only decoding")
    p.add_argument("--json", dest="json_out", help="also write the JSON line to this file")
    _add_overwrite(p, "an existing --json file")


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="reproducible studies; `nmt study clipping --help`")
    studies = p.add_subparsers(dest="study", required=True, parser_class=_COMMAND)
    c = studies.add_parser("clipping", help="why clip: SGD and Adam with and without gradient-norm clipping")
    c.add_argument("--config", required=True)
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--minutes", type=float, default=4.0, help="training budget per setting")
    c.add_argument("--out", default="runs/clipping_study", help="output folder")
    _add_overwrite(c, "files in --out that are not a study's (study.md, the PNGs)")
    c.add_argument("--only", nargs="+", type=int, metavar="N",
                   help="keep only these default settings (numbered from 1 in the order of the table)")
    c.add_argument("--add", action="append", default=[], metavar="OPT:LR:CLIP", help="add a setting, e.g. sgd:2.0:5")
    c.add_argument("--max-grad-norm", nargs="+", type=float, default=[], metavar="T",
                   help="sweep: add SGD lr 1.0 with each of these clipping thresholds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmt", description="LSTM-attention neural machine translation")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action=_Version, nargs=0, help="print nmt's and torch's versions and the "
                        "device and precision auto chooses here, then exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_COMMAND)
    for add in (_add_train, _add_prepare, _add_translate, _add_evaluate, _add_average, _add_serve, _add_plot,
                _add_bench, _add_study):
        add(sub)
    return parser
