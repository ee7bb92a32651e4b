"""One handler per command, named as the command: call the library, print the result (its failures raise)."""

from __future__ import annotations

import json
from pathlib import Path

from nmt.cache import cache_root
from nmt.cli.parser import check_flags
from nmt.config import load_config
from nmt.errors import NMTError


def train(args) -> None:
    from nmt.experiment import train_and_test

    results = train_and_test(args.config, args.overrides, args.run_dir, args.resume)
    if "test_bleu" in results:
        print(f"test BLEU {results['test_bleu']:.2f}  chrF {results['test_chrf']:.2f}  TER {results['test_ter']:.2f}  "
              f"({results['bleu_signature']})")


def prepare(args) -> None:
    from nmt.data.prepare import prepare as prepare_data

    if args.clean is not None:
        return _clean(args)
    data = prepare_data(load_config(args.config, args.overrides))
    meta = data.store.meta
    print(f"prepared: {data.store.folder}")
    print(f"  {meta['pairs']:,} training pairs of {meta['offered']:,} ({meta['tokens']['src']:,} source and "
          f"{meta['tokens']['tgt']:,} target pieces), {data.store.bytes / 2**20:,.1f} MiB")
    print("  nmt train with the same data, tokenizer and filter settings (and the same NMT_CACHE) reads it")


def _clean(args) -> None:
    from nmt.data.reclaim import reclaim

    if args.config or args.overrides:
        raise NMTError("--clean takes no --config or --set: it cleans the whole cache; prepare separately")
    check_flags(args)
    removed = reclaim(args.clean)
    for path, size in removed:
        print(f"removed {path} ({size / 2**20:,.1f} MiB)")
    entries = f"{len(removed)} entr{'y' if len(removed) == 1 else 'ies'} unused for {args.clean:g} days"
    print(f"freed {sum(size for _, size in removed) / 2**20:,.1f} MiB in {cache_root()} ({entries})" if removed
          else f"nothing in {cache_root()} was unused for {args.clean:g} days")


def translate(args) -> None:
    from nmt.cli.translate import translate_command

    translate_command(args)


def evaluate(args) -> None:
    from nmt.cli.translate import evaluate_command

    result = evaluate_command(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['bleu_text']}\n  signature: {result['bleu_signature']}")
        print(f"chrF2 = {result['chrf']:.2f}\n  signature: {result['chrf_signature']}")
        print(f"TER = {result['ter']:.2f}\n  signature: {result['ter_signature']}")


def average(args) -> None:
    from nmt import checkpoint
    from nmt.outputs import check_output, remember

    if args.last is not None:
        if args.checkpoints or not args.run_dir or args.last < 2:
            raise NMTError("--last N (N >= 2) takes the checkpoints of --run-dir; give either CKPT... or both")
        kept = checkpoint.step_checkpoints(Path(args.run_dir) / "checkpoints")
        if len(kept) < args.last:
            raise NMTError(f"{args.run_dir}/checkpoints has {len(kept)} step_*.pt checkpoint(s), fewer than "
                           f"--last {args.last}; train with --set train.keep_checkpoints={args.last}")
        paths = kept[-args.last:]
    else:
        paths = [Path(p) for p in args.checkpoints]
    out = check_output(args.out, reads=paths, flag="--out", overwrite=args.overwrite)
    checkpoint.save(checkpoint.average(paths), out)
    remember(out)
    print(f"{out}: the average of {len(paths)} checkpoints ({', '.join(p.name for p in paths)})")


def serve(args) -> None:
    from nmt.cli.translate import load_translator
    from nmt.serve import Limits
    from nmt.serve_app import check_port, create_app, serve_until_stopped

    check_flags(args)
    check_port(args.host, args.port)  # before the model loads
    translator, loaded = load_translator(args)
    config, decode = loaded[0].config, translator.decode
    limits = Limits(max_texts=args.max_texts, max_chars=args.max_chars, max_queue=args.max_queue,
                    timeout_s=args.timeout, max_wait_ms=args.max_wait_ms,
                    batch_tokens=decode.batch_tokens, client_timeout_s=args.client_timeout,
                    keep_alive_s=args.keep_alive, max_connections=args.max_connections, debug=bool(args.debug))
    # what a client needs to use the server; host paths and the training config only if the operator says so
    info = {"source_language": config.data.src_lang, "target_language": config.data.tgt_lang,
            "checkpoints": [Path(p).name for p in args.checkpoint], "ensemble": len(loaded),
            "parameters": sum(one.model.num_parameters() for one in loaded),
            "validation_bleu": [one.validation_bleu for one in loaded],
            "decode": {"beam_size": decode.beam_size, "length_penalty": decode.length_penalty,
                       "max_len_ratio": decode.max_len_ratio},
            "limits": {"max_texts": limits.max_texts, "max_chars": limits.max_chars, "timeout_s": limits.timeout_s},
            **({"config": config.to_dict()} if args.expose_config else {})}
    app = create_app(translator, info, limits, decode_thread=False)
    if not serve_until_stopped(app, args.host, args.port, limits):
        raise NMTError(f"could not serve on {args.host}:{args.port} (the log above says why)")


def plot(args) -> None:
    from nmt.plot import plot_run

    print(plot_run(Path(args.run_dir), Path(args.out) if args.out else None, overwrite=args.overwrite))


def bench(args) -> None:
    from nmt.bench import run_bench
    from nmt.outputs import check_output, write_text

    check_flags(args)
    if args.json_out:
        check_output(args.json_out, reads=[args.checkpoint] if args.checkpoint else [], flag="--json",
                     overwrite=args.overwrite)
    report = run_bench(args)
    rows = [
        ("device", report.get("cpu", report["device"])),
        ("torch / threads", f"{report['torch']} / {report['threads']}"),
        ("precision", report["precision_choice"]),
        ("parameters", f"{report['parameters']:,}"), ("batch", report["batch"]),
    ]
    if report["decoded_parameters"] != report["parameters"]:
        rows.append(("decoded model", f"{report['decoded_parameters']:,} parameters (the checkpoint's)"))
    if "products" in report:
        rows += [("products", report["products"]), ("decoder loop steps", report["recurrence_steps"])]
    if "train_tokens_per_sec" in report:
        rows += [
            ("training target tokens/s", f"{report['train_tokens_per_sec']:,.0f}"),
            ("training steps/s", f"{report['train_steps_per_sec']:.2f}"),
            ("matmul bound (GFLOP/s)", f"{report['matmul_gflops']:.0f}"),
            ("achieved (GFLOP/s)", f"{report['achieved_gflops']:.0f}"),
            ("fraction of FLOP bound", f"{100 * report['fraction_of_flop_bound']:.0f}%"),
        ]
    rows += [
        ("greedy sentences/s", f"{report['greedy_sentences_per_sec']:.0f}  (BLEU {report['greedy_bleu']:.2f})"),
        ("beam-5 sentences/s", f"{report['beam5_sentences_per_sec']:.0f}  (BLEU {report['beam5_bleu']:.2f})"),
        ("peak RSS (MiB)", f"{report['peak_rss_mib']:.0f}"),
    ]
    if "peak_gpu_memory_mib" in report:
        rows.append(("peak GPU memory (MiB)", f"{report['peak_gpu_memory_mib']:.0f}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    line = json.dumps(report)
    if args.json_out:
        write_text(Path(args.json_out), line + "\n")
    print(line)


def study(args) -> None:
    from nmt.study import run_study

    check_flags(args)
    table, pictures = run_study(args)
    print(table, *pictures, sep="\n")
