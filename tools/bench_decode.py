"""Decoding throughput of mmseq's beam search, side by side with the same search run one utterance
at a time and with Hugging Face transformers' ``generate()`` on a decoder of the same size.

    python tools/bench_decode.py                      # beams 1, 4, 10; batch 32; 32 output tokens
    python tools/bench_decode.py --beams 4 --batch 32 --json out.json
    python tools/bench_decode.py --checkpoint exp/synth_speech/best --manifest data/synth_speech/test.jsonl

Every method decodes the same encoder outputs (speech encoder of the synth_speech recipe on random
audio of 2 to 6 s) into exactly ``--length`` new tokens (``</s>`` is forbidden before, forced at
the end), so all do the same number of decoder steps. The transformers model is an
``MBartForConditionalGeneration`` (pre-norm, GELU, learned positions, tied output embedding, like
ours) with our decoder's layers, width, heads, feed-forward width and vocabulary, fed the same
memory through ``encoder_outputs``. Methods run interleaved, ``--repeats`` times; the best time of
each is reported. By default the time is this process's CPU time on one thread, which a shared
machine disturbs far less than elapsed time (``--clock wall`` for that). The real-time factor
covers the encoder as well: ``(encode + decode seconds) / audio seconds`` for the batched search.

transformers is a benchmark-only extra (``pip install -e .[bench]``), not a dependency of mmseq.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mmseq.model import ModelConfig, Seq2Seq  # noqa: E402
from mmseq.decoding.options import DecodingOptions  # noqa: E402
from mmseq.decoding.search import beam_search, greedy_search  # noqa: E402
from mmseq.tokenizer import CharTokenizer  # noqa: E402

ENCODER = dict(name="conformer", n_mels=80, dim=144, layers=4, heads=4, ffn_dim=576, conv_kernel=15, subsampling=4,
               subsampling_channels=64, dropout=0.0, specaugment=None)


def build_model(args) -> Seq2Seq:
    """A random speech model with the asked decoder size and a vocabulary of ``args.vocab`` ids."""
    specials = 4 + 3  # <pad> <s> </s> <unk> and the three task tokens
    symbols = [chr(0x4E00 + i) for i in range(args.vocab - specials)]
    torch.manual_seed(0)
    decoder = dict(dim=args.dim, layers=args.layers, heads=args.heads, ffn_dim=args.ffn, dropout=0.0,
                   max_length=args.length + 8)
    return Seq2Seq(ModelConfig(encoder=dict(ENCODER), decoder=decoder, ctc_weight=0.3), CharTokenizer(symbols),
                   "asr").eval()


def build_hf_model(args):
    from transformers import MBartConfig, MBartForConditionalGeneration

    config = MBartConfig(vocab_size=args.vocab, d_model=args.dim, decoder_layers=args.layers,
                         decoder_attention_heads=args.heads, decoder_ffn_dim=args.ffn, encoder_layers=1,
                         encoder_attention_heads=args.heads, encoder_ffn_dim=args.ffn,
                         max_position_embeddings=args.length + 8, dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0, activation_function="gelu", scale_embedding=True, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, forced_eos_token_id=None)
    torch.manual_seed(0)
    return MBartForConditionalGeneration(config).eval()


def audio_batch(batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    seconds = torch.linspace(2.0, 6.0, batch)
    lengths = (seconds * 16000).long()
    inputs = torch.randn(batch, int(lengths.max()), generator=generator) * 0.1
    inputs *= torch.arange(inputs.shape[1])[None] < lengths[:, None]
    return inputs, lengths, float(seconds.sum())


def forced(args, beam: int) -> DecodingOptions:
    return DecodingOptions(beam_size=beam, max_length=args.length, min_length=args.length - 1, length_penalty=1.0)


@torch.no_grad()
def ours_batched(model, memory, mask, prompt, args, beam):
    options = forced(args, beam)
    if beam == 1:
        return greedy_search(model, memory, mask, prompt, options)
    return beam_search(model, memory, mask, prompt, options)


@torch.no_grad()
def ours_one_at_a_time(model, memory, mask, prompt, args, beam):
    for row in range(memory.shape[0]):
        frames = int(mask[row].sum())
        ours_batched(model, memory[row:row + 1, :frames], mask[row:row + 1, :frames], prompt, args, beam)


@torch.no_grad()
def hugging_face(hf_model, memory, mask, args, beam):
    from transformers.modeling_outputs import BaseModelOutput

    out = hf_model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=memory), attention_mask=mask.long(),
                            num_beams=beam, do_sample=False, max_new_tokens=args.length, min_new_tokens=args.length,
                            length_penalty=1.0, early_stopping=False, use_cache=True)
    assert out.shape[1] == args.length + 1, out.shape  # decoder start + the forced number of tokens


@torch.no_grad()
def encode_and_decode(model, inputs, lengths, prompt, args, beam):
    memory, mask = model.encode(inputs, lengths)
    ours_batched(model, memory, mask, prompt, args, beam)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def best_time(function, repeats: int, clock: str = "cpu") -> float:
    now = CLOCKS[clock]
    sync = torch.cuda.synchronize if torch.cuda.is_available() and torch.cuda.is_initialized() else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = now()
        function()
        sync()  # a GPU runs ahead of the host: count its work, not only the launches
        times.append(now() - start)
    return min(times)


def real_lengths(args) -> int:
    """``--checkpoint``: a trained model on a manifest's utterances, lengths unforced (each ends at
    its own ``</s>``, so finished inputs leave the batch): utterances/s and RTFx (audio seconds per
    second, encoder included) at each beam, without and with CTC."""
    import mmseq
    from bench_rtf import read_manifest

    model = mmseq.load(args.checkpoint, args.device)
    task = model.route().task
    waveforms = [task.load_input(r["audio"]) for r in read_manifest(Path(args.manifest), args.limit)]
    rate = task.encoder.sample_rate
    order = sorted(range(len(waveforms)), key=lambda i: -len(waveforms[i]))
    batches = [task.collate_inputs([waveforms[i] for i in order[k:k + args.batch]])
               for k in range(0, len(order), args.batch)]
    audio = sum(len(w) for w in waveforms) / rate
    has_ctc = model.route(task.name).ctc_head is not None

    def decode(beam, ctc_weight):
        for inputs, lengths in batches:
            model.generate({"inputs": inputs, "lengths": lengths, "task": task.name}, beam_size=beam,
                           ctc_weight=ctc_weight)

    print(f"{args.checkpoint}: {len(waveforms)} utterances, {audio:.0f} s of audio, batch {args.batch}, "
          f"{args.device}, {torch.get_num_threads()} threads, {args.clock} clock (best of {args.repeats})")
    print("| beam | CTC weight | seconds | utterances/s | RTFx |\n|---|---|---|---|---|")
    rows = []
    decode(args.beams[0], 0.0)  # warm-up
    for beam in args.beams:
        for ctc_weight in ([0.0, 0.3] if has_ctc else [0.0]):
            seconds = best_time(lambda: decode(beam, ctc_weight), args.repeats, args.clock)
            rows.append({"beam": beam, "ctc_weight": ctc_weight, "seconds": round(seconds, 3),
                         "utterances_per_second": round(len(waveforms) / seconds, 2), "rtfx": round(audio / seconds, 1)})
            print(f"| {beam} | {ctc_weight} | {seconds:.2f} | {len(waveforms) / seconds:.1f} | {audio / seconds:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "audio_seconds": audio, "rows": rows}, indent=1))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--batch", type=int, default=32, help="utterances decoded together")
    parser.add_argument("--length", type=int, default=32, help="new tokens per output, </s> included")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="cpu",
                        help="cpu: this process's CPU seconds (steady on a shared machine; with one thread the "
                             "wall time of an idle core); wall: elapsed seconds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on cuda the clock is wall time)")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    parser.add_argument("--no-single", action="store_true", help="skip the one-at-a-time runs")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--checkpoint", help="instead: a trained checkpoint on --manifest, real lengths")
    parser.add_argument("--manifest", help="with --checkpoint: the utterances to decode")
    parser.add_argument("--limit", type=int, default=None, help="with --checkpoint: the first N utterances")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device != "cpu":
        args.clock = "wall"  # CPU seconds do not see the GPU's work
    if args.checkpoint:
        return real_lengths(args)

    model = build_model(args).to(args.device)
    hf_model = None if args.no_hf else build_hf_model(args).to(args.device)
    inputs, lengths, audio_seconds = audio_batch(args.batch)
    inputs, lengths = inputs.to(args.device), lengths.to(args.device)
    with torch.no_grad():
        memory, mask = model.encode(inputs, lengths)
        hf_memory = model.decoder.memory_proj(memory)  # ours projects it once per input inside the search
    prompt = model.route().task.prompt()
    tokens = args.batch * args.length
    print(f"decoder: {args.layers} layers, width {args.dim}, {args.heads} heads, ffn {args.ffn}, vocab {args.vocab}; "
          f"batch {args.batch}, {args.length} new tokens each, {memory.shape[1]} memory frames at most; "
          f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, {args.clock} clock")
    rows = []
    for beam in args.beams:
        methods = {"mmseq batched": lambda: ours_batched(model, memory, mask, prompt, args, beam)}
        if not args.no_single:
            methods["mmseq one at a time"] = lambda: ours_one_at_a_time(model, memory, mask, prompt, args, beam)
        if hf_model is not None:
            methods["transformers generate()"] = lambda: hugging_face(hf_model, hf_memory, mask, args, beam)
        for function in methods.values():  # warm up
            function()
        seconds = {name: float("inf") for name in methods}
        for _ in range(args.repeats):  # interleaved, so a busy moment hurts every method alike
            for name, function in methods.items():
                seconds[name] = min(seconds[name], best_time(function, 1, args.clock))
        with_encoder = best_time(lambda: encode_and_decode(model, inputs, lengths, prompt, args, beam), args.repeats,
                                 args.clock)
        for name, value in seconds.items():
            row = {"beam": beam, "method": name, "seconds": round(value, 4),
                   "tokens_per_second": round(tokens / value, 1), "utterances_per_second": round(args.batch / value, 2)}
            if name == "mmseq batched":
                row["real_time_factor"] = round(with_encoder / audio_seconds, 4)
            rows.append(row)
        base = seconds["mmseq batched"]
        for row in rows[-len(methods):]:
            row["mmseq_speedup"] = round(row["seconds"] / base, 2)

    header = ["beam", "method", "seconds", "tokens/s", "utterances/s", "mmseq batched is x faster",
              "RTF (with encoder)"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print(f"| {row['beam']} | {row['method']} | {row['seconds']:.3f} | {row['tokens_per_second']:.0f} | "
              f"{row['utterances_per_second']:.1f} | {row['mmseq_speedup']:.2f} | {row.get('real_time_factor', '')} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "audio_seconds": audio_seconds, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
