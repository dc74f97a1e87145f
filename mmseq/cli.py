"""The ``mmseq`` command: train, eval, transcribe, caption, translate, average, export, ngram, import, encoders."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import MmseqError


def _decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam-size", type=int, help="beam width (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=16, help="inputs decoded together (default 16)")
    parser.add_argument("--ctc-weight", type=float, help="joint CTC/attention weight (speech)")
    parser.add_argument("--length-penalty", type=float, help="score / length ** penalty")
    parser.add_argument("--length-bonus", type=float, help="added to the log-probability per output token")
    parser.add_argument("--lm", metavar="CHECKPOINT",
                        help="language model for shallow fusion: a checkpoint of task 'lm', or an n-gram model "
                             "(the folder `mmseq ngram` wrote, or an ARPA file)")
    parser.add_argument("--lm-weight", type=float, help="weight of the language model (default 0.3 with --lm)")
    parser.add_argument("--prompt", help="prompt tokens and/or text prefix, e.g. '<|short|> a photo of'")
    parser.add_argument("--context", help="text the output is conditioned on and never includes: the sentence "
                                          "before, or names and words to expect ('Okonkwo, Umuofia')")
    parser.add_argument("--boost", metavar="FILE",
                        help="words or phrases to favour (names, rare words), one a line ('#' comments): a bonus "
                             "for each token that spells one, fused with the model (a manifest line's own "
                             "\"boost\" list replaces it for that line)")
    parser.add_argument("--boost-weight", type=float, metavar="W",
                        help="weight of the --boost bonus (default 1.0 with --boost; give it alone to use the "
                             "manifest lines' \"boost\" lists)")
    parser.add_argument("--prompt-tuning", metavar="FOLDER",
                        help="apply a prompt-tuned task (the folder `mmseq train` wrote with prompt_tuning) "
                             "to this checkpoint")
    parser.add_argument("--task", help="the task (route) of a model that serves several, e.g. asr or caption "
                                       "(needed only when the input does not say)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--compute-type", choices=["float32", "int8"], default="float32",
                        help="int8: the linear layers in 8 bits (CPU dynamic quantization; faster, but it cost "
                             "Whisper-base 4.5 WER points on real speech: see the README)")


def _options(args) -> dict:
    names = {"beam_size": args.beam_size, "ctc_weight": args.ctc_weight, "length_penalty": args.length_penalty,
             "length_bonus": args.length_bonus, "lm_weight": args.lm_weight, "context": args.context,
             "boost_weight": args.boost_weight}
    if getattr(args, "previous_text", False):
        names["previous_text"] = True
    if args.lm:
        names.update(lm=args.lm, lm_weight=0.3 if args.lm_weight is None else args.lm_weight)
    if args.boost:
        names.update(boost=read_boost(args.boost), boost_weight=1.0 if args.boost_weight is None else args.boost_weight)
    if getattr(args, "window", None) is not None:
        names["longform"] = _longform(args)
    return {k: v for k, v in names.items() if v is not None}


MAX_BOOST_BYTES = 64 * 2**20  # a word list of millions of words


def read_boost(path) -> list[str]:
    """The words or phrases of a ``--boost`` file: one a line, blank lines and ``#`` comments
    skipped; a file that cannot be read is a one-line :class:`~mmseq.errors.InputError`."""
    from .data.files import read_regular_file
    from .errors import InputError
    try:  # (a FIFO, a device or a huge file is refused, not waited on: data/files.py)
        text = read_regular_file(path, MAX_BOOST_BYTES, "word list").decode("utf-8")
    except (InputError, UnicodeDecodeError) as error:
        raise InputError(f"--boost {path}: cannot read the word list ({error})") from None
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _longform(args):
    """The long-audio settings of ``transcribe``; a ``--window`` out of range is a one-line error."""
    from .errors import ConfigError
    from .inference.longform import LongformOptions
    before, after = args.silence or (LongformOptions.silence_before, LongformOptions.silence_after)
    try:
        return LongformOptions(window=args.window, split=args.split, segment_pause=args.segment_pause,
                               silence_before=before, silence_after=after)
    except ConfigError as error:  # "window=1e-09: ..." as the flag the user typed
        raise ConfigError(f"--{error}".replace("=", " ", 1)) from None


def _load(args):
    import torch

    from .checks import check_arguments, rules_of
    from .decoding.options import DecodingOptions
    from .checkpoint import load
    check_arguments(args, rules_of(DecodingOptions))  # every option in its range, before loading
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load(args.checkpoint, device, getattr(args, "compute_type", "float32"))
    if getattr(args, "prompt_tuning", None):
        from .checkpoint import apply_prompt_tuning
        apply_prompt_tuning(model, args.prompt_tuning, args.checkpoint)
    return model


def command_train(args) -> int:
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import main as torchrun
        try:  # --standalone: a rendezvous on a free local port, so two runs on one machine do not clash
            torchrun(["--standalone", f"--nproc_per_node={args.nproc}", "-m", "mmseq", "train", args.config,
                      *args.overrides])
        except ChildFailedError as error:
            failure = error.get_first_failure()[1]
            print(f"mmseq: error: training process {failure.local_rank} failed (exit code {failure.exitcode})",
                  file=sys.stderr)
            return failure.exitcode if failure.exitcode > 0 else 1
        except SignalException as stop:  # passed on to the processes, which save a checkpoint and stop
            print(f"mmseq: stopped by signal {int(stop.sigval)}; rerun the same command to resume", file=sys.stderr)
            return 128 + int(stop.sigval)
        return 0
    from .config import load_config
    from .training.trainer import train
    best = train(load_config(args.config, args.overrides))  # output_dir is checked before any work
    if best is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}")
    return 0


def command_eval(args) -> int:
    from .inference.evaluate import evaluate
    out = args.out or Path(args.checkpoint).parent / f"eval-{Path(args.manifest).stem}"
    options = _options(args)  # a missing --boost file fails before the model loads
    model = _load(args)  # (evaluate checks the --out folder before decoding)
    metrics = evaluate(model, args.manifest, out, batch_size=args.batch_size, prompt=args.prompt, task=args.task,
                       **options)
    width = max(map(len, metrics))
    for name, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
        print(f"{name:<{width}}  {value}")
    return 0


def _decode_files(args) -> int:
    """``mmseq transcribe | caption | translate``: expand the inputs, decode, write, summarise.
    Exit status 1 when any input failed (each failure is a line of the output with its error and
    a one-line message on stderr)."""
    from .decoding.lm import with_lm
    from .inference.run import run_job
    from .inference.sources import Inputs

    task, timestamps = args.batch_task, getattr(args, "timestamps", None)
    options = _options(args)  # before the output is opened: a bad setting leaves no file behind
    inputs = Inputs(args.inputs, task, sys.stdin)
    writer = _writer(args, task)
    try:
        model = _load(args)
        name = model.route(args.task, task).name  # --task, or the model's only route of this command's kind
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        summary = run_job(model, inputs, _with_subtitles(writer, args), task=name, batch_size=args.batch_size,
                          skip=writer.done, progress=progress, nbest=args.nbest, prompt=args.prompt,
                          timestamps="auto" if timestamps else None, **with_lm(options, model))
    finally:
        writer.close()
    print(summary.line(args.output), file=sys.stderr)
    if getattr(args, "attention", None):
        _plot_attention(model, inputs, args, name)
    return 1 if summary.failed else 0


def _writer(args, task: str):
    """Where results go: ``--output FILE`` (opened now, so an unwritable one fails before any
    work), else the terminal."""
    from .inference.sources import MANIFEST_SUFFIXES
    from .inference.writers import OutputError, ResultWriter, TerminalWriter

    if args.resume and not args.output:
        raise OutputError("--resume needs --output FILE")
    if args.nbest is not None and args.nbest < 1:
        raise OutputError(f"--nbest must be at least 1, got {args.nbest}")
    timestamps = getattr(args, "timestamps", None)
    if args.output:
        return ResultWriter(args.output, args.nbest, paths=task != "text", resume=args.resume,
                            segments=timestamps is not None)
    plain_file = len(args.inputs) == 1 and args.inputs[0] != "-" and os.path.isfile(args.inputs[0]) \
        and not args.inputs[0].lower().endswith(MANIFEST_SUFFIXES)
    return TerminalWriter(bare=task == "text" or plain_file, lines=task == "text", ordered=args.ordered,
                          nbest=args.nbest, timestamps=timestamps)


def _with_subtitles(writer, args):
    """``--timestamps srt|vtt --output FILE``: each input's subtitles are written beside it
    (``talk.wav`` -> ``talk.srt``) before its line goes to FILE, so a resumed job redoes both."""
    if not args.output or getattr(args, "timestamps", None) not in ("srt", "vtt"):
        return writer.write if args.output else writer
    from .inference.writers import write_subtitles

    def write(item, result):
        if result.error is None:
            write_subtitles(item.source, result, args.timestamps)
        writer.write(item, result)
    return write


def _plot_attention(model, inputs, args, task: str) -> None:
    from .plots import plot_attention
    first = next(iter(inputs), None)
    if first is not None and first.error is None:
        plot_attention(model, first.source, args.attention, prompt=args.prompt, task=task)
        print(f"attention plot: {args.attention}", file=sys.stderr)


def command_average(args) -> int:
    from .training.average import average_checkpoints, select_checkpoints
    if args.last is None and args.best is None:
        folders = args.checkpoints
    elif len(args.checkpoints) == 1:
        folders = select_checkpoints(args.checkpoints[0], last=args.last, best=args.best)
    else:
        print("mmseq: error: --last/--best take one training output folder", file=sys.stderr)
        return 2
    out = average_checkpoints(folders, args.out)
    print(f"averaged {len(folders)} checkpoints ({', '.join(Path(f).name for f in folders)}) into {out}")
    return 0


def command_encoders(args) -> int:
    from .encoders import ENCODERS
    for name in ENCODERS.names():
        print(f"{name:<24} {ENCODERS.origin(name)}")
    return 0


def command_export(args) -> int:
    if args.format == "transformers":
        from .exporters import export_whisper_transformers
        out = export_whisper_transformers(args.checkpoint, args.out, args.task)
        print(f"wrote {out} (load it with transformers' WhisperForConditionalGeneration.from_pretrained)")
        return 0
    from .exporters.onnx import export_onnx
    print(f"wrote {export_onnx(args.checkpoint, args.out, args.task)} (run it with mmseq.inference.onnx_runner.OnnxModel)")
    return 0


def command_ngram(args) -> int:
    import time

    from .decoding.lm import build
    start = time.perf_counter()
    sizes = build(args.checkpoint, args.texts, args.out, args.order, args.prune, args.arpa)
    print(f"wrote {args.out} ({', '.join(f'{v} {k}' for k, v in sizes.items())}) in {time.perf_counter() - start:.0f} s"
          + (f"; ARPA: {args.arpa}" if args.arpa else ""))
    return 0


def command_import(args) -> int:
    import time

    from .importers.whisper import import_whisper
    start = time.perf_counter()
    model = import_whisper(args.source, args.out, args.tokenizer, args.tail, args.language, args.feature_padding)
    sizes = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out} (whisper, {sizes / 1e6:.1f} M parameters, from {model.training_record['imported']['from']}) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmseq", description="Multimodal sequence-to-sequence learning.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_eval(commands)
    for name, noun, task in (("transcribe", "audio", "asr"), ("caption", "image", "caption"),
                             ("translate", "text", "text")):
        _add_batch_command(commands, name, noun, task)
    _add_average(commands)
    _add_export(commands)
    _add_ngram(commands)
    _add_import(commands)
    p = commands.add_parser("encoders", help="list the registered encoders, built-in and from plugins")
    p.set_defaults(run=command_encoders)
    return parser


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train any task from a YAML config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as trainer.max_epochs=3")
    p.add_argument("--nproc", type=int, default=0, help="processes on this machine (DDP through torchrun)")
    p.set_defaults(run=command_train)


def _add_eval(commands) -> None:
    p = commands.add_parser("eval", help="decode a manifest and score it with the task's metrics")
    p.add_argument("checkpoint")
    p.add_argument("manifest")
    p.add_argument("--out", default=None,
                   help="folder for metrics.json and hypotheses.jsonl (default: eval-MANIFEST beside the checkpoint)")
    _decoding_arguments(p)
    p.set_defaults(run=command_eval)


def _add_batch_command(commands, name: str, noun: str, task: str) -> None:
    """``transcribe``, ``caption`` or ``translate``: many inputs in, one result each out."""
    p = commands.add_parser(name, help=f"one {'transcript' if name == 'transcribe' else 'caption'} per {noun} "
                                       f"file" if task != "text" else "one output line per input line")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", metavar="TEXT-FILE" if task == "text" else noun.upper(),
                   help="files, folders, globs, .jsonl manifests, or - for standard input"
                        + (" (text lines)" if task == "text" else " (one path a line)"))
    noun = "text lines" if task == "text" else "results"
    p.add_argument("--output", "-o", metavar="FILE",
                   help=f"write {noun} to FILE as they come: .jsonl, .csv or .tsv (default: print them)")
    p.add_argument("--resume", action="store_true",
                   help="continue --output FILE: skip inputs already there (failed ones are tried again)")
    p.add_argument("--nbest", type=int, metavar="N", help="also write the N best hypotheses with their scores")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--attention", metavar="PNG", help="draw the decoder's cross-attention for the first input")
    p.add_argument("--ordered", action="store_true", help="print results in input order at the end")
    p.set_defaults(batch_task=task, run=_decode_files)
    if name == "transcribe":
        _long_audio_arguments(p)
    _decoding_arguments(p)


def _long_audio_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", type=float, default=30.0,
                   help="longer audio is split into windows of at most this many seconds (default 30, at least 0.1)")
    p.add_argument("--split", choices=["energy", "ctc"], default="energy",
                   help="where long audio is split: pauses by energy or by CTC blanks (default energy)")
    p.add_argument("--segment-pause", type=float, metavar="SECONDS",
                   help="long audio: also end a window at every pause this long (one sentence per "
                        "window, for models trained on single sentences)")
    p.add_argument("--timestamps", choices=["json", "srt", "vtt"],
                   help="word and segment times. Without --output: one JSON line per input on stdout, or SRT / "
                        "WebVTT subtitles (on stdout for one audio file; else written beside each input, "
                        "talk.wav -> talk.srt). With --output FILE: each line of FILE also carries the input's "
                        "segments and their words, and srt / vtt subtitles are written beside each input; "
                        "--resume skips the inputs already in FILE")
    p.add_argument("--previous-text", action="store_true",
                   help="long audio: give each window the text of the window before as its context "
                        "(models trained with contexts)")
    p.add_argument("--silence", type=float, nargs=2, metavar=("BEFORE", "AFTER"),
                   help="long audio: seconds of silence kept before and after each window's sound, "
                        "as in the model's training utterances (default 0.1 0.1)")


def _add_average(commands) -> None:
    p = commands.add_parser("average", help="average the weights of checkpoints (the last or best N of a run)")
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders, or one training output folder with --last/--best")
    p.add_argument("--out", required=True, help="folder for the averaged checkpoint")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--last", type=int, help="average the run's N newest checkpoints")
    group.add_argument("--best", type=int, help="average the run's N best checkpoints by validation metric")
    p.set_defaults(run=command_average)


def _add_export(commands) -> None:
    p = commands.add_parser("export", help="write a checkpoint as ONNX graphs (encoder, decoder step with its cache), "
                                           "or an imported Whisper as a transformers folder")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=["onnx", "transformers"], default="onnx",
                   help="onnx (default), or transformers: a WhisperForConditionalGeneration folder (imported Whisper)")
    p.add_argument("--out", required=True, help="folder for encoder.onnx, decoder_step.onnx and their settings, or "
                                                "for the transformers folder")
    p.add_argument("--task", help="the task to export, for a model that serves several")
    p.set_defaults(run=command_export)


def _add_ngram(commands) -> None:
    p = commands.add_parser("ngram", help="count a token n-gram language model (for --lm) with a checkpoint's tokenizer")
    p.add_argument("checkpoint", help="the checkpoint whose tokenizer the model counts")
    p.add_argument("texts", nargs="+", help="text files (a sentence a line) or .jsonl manifests (each line's text)")
    p.add_argument("--out", required=True, help="folder for ngram.safetensors and ngram.json (pass it as --lm)")
    p.add_argument("--order", type=int, default=4, help="longest n-gram (default 4)")
    p.add_argument("--prune", type=int, default=1,
                   help="drop n-grams of the highest order seen fewer times than this (default 1: keep all)")
    p.add_argument("--arpa", help="also write the model as an ARPA file (KenLM, SRILM)")
    p.set_defaults(run=command_ngram)


def _add_import(commands) -> None:
    p = commands.add_parser("import", help="turn a pretrained model of the field into an mmseq checkpoint folder")
    p.add_argument("kind", choices=["whisper"], help="what the model is")
    p.add_argument("source", help="a CTranslate2 folder (faster-whisper's), an openai-whisper .pt file, or a "
                                  "transformers folder")
    p.add_argument("out", help="the checkpoint folder to write")
    p.add_argument("--tokenizer", help="a tokenizer.json (or a folder holding one), for a source without one")
    p.add_argument("--language", default="en", help="the language token of the route's prompt (default en)")
    p.add_argument("--tail", type=float, default=30.0, metavar="SECONDS",
                   help="silence after each input's audio, the whole at most Whisper's 30-s window (default 30: "
                        "every input a whole window); less is faster on short clips; 0: each input's real length "
                        "(Whisper-base then often repeats itself; see README)")
    p.add_argument("--feature-padding", choices=["silence", "zeros"], default="silence",
                   help="what follows the audio in a window: the log-mel of silence (openai-whisper, transformers; "
                        "default) or zero features (faster-whisper: its outputs, token for token)")
    p.set_defaults(run=command_import)


def _options_first(argv: list[str]) -> list[str]:
    """``mmseq train CONFIG --nproc 2 a=b``: argparse stops filling the overrides at an option,
    so move ``train``'s options in front of its positional arguments."""
    if not argv or argv[0] != "train":
        return argv
    options, rest, index = [], [], 1
    while index < len(argv):
        word = argv[index]
        if word == "--nproc" and index + 1 < len(argv):
            options += argv[index:index + 2]
            index += 2
            continue
        (options if word.startswith("--nproc=") or word in ("-h", "--help") else rest).append(word)
        index += 1
    return ["train", *options, *rest]


def main(argv: list[str] | None = None) -> int:
    argv = _options_first(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MmseqError as error:
        print(f"mmseq: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
