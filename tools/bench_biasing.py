"""Contextual biasing on real speech: B-WER, U-WER, WER and RTFx of Whisper with an utterance's
biasing list given in four ways, beside faster-whisper's two, on the same weights.

The lists come from ``tools/biasing_lists.py`` (a manifest with a ``biasing`` field: the
utterance's rare words among N distractors). Conditions (``--conditions``, comma-separated):

- ``none``: no list (the list is still used for scoring);
- ``context``: mmseq, the list as the decoder's context segment (Whisper's ``<|startofprev|>``
  previous text: the words joined by ``--context-join``, its last 223 tokens kept);
- ``boost``: mmseq, the list as :class:`mmseq.decoding.scorers.ContextBoost` (shallow fusion over a
  prefix tree of the words' tokens) with weight ``--boost-weight``;
- ``both``: context and boost;
- ``fw-none``, ``fw-prompt``, ``fw-hotwords``: faster-whisper without a list, with the list as
  ``initial_prompt`` (joined by ", ") and as ``hotwords`` (joined by spaces); beam ``--beam``.

Every mmseq condition decodes with beam ``--beam``; ``--prompt-tuning FOLDER --task NAME`` decodes
through a prompt-tuned route applied to ``--mmseq-model`` (the biasing-aware LoRA of
``recipes/whisper/biasing_lora.yaml``). Audio is read and models are loaded before the
clock; one clip of warm-up. Time the conditions alone on the machine (``tools/bench_whisper.py``'s
caveats apply). One line per condition on stdout, appended to ``<out>/biasing.jsonl``::

    python tools/bench_biasing.py /tmp/cv100_n100.jsonl --mmseq-model exp/whisper-base --beam 4 --out exp/biasing
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_whisper import DEFAULT_CT2, FW_OPTIONS, Settings, load_clips, timed  # noqa: E402

from mmseq.metrics.biasing import biased_word_errors  # noqa: E402

MMSEQ = {"none": (False, False), "context": (True, False), "boost": (False, True), "both": (True, True)}


def run_mmseq(clips, lists, settings, args, condition):
    import torch

    import mmseq

    torch.set_num_threads(settings.threads)
    model = mmseq.load(args.mmseq_model, device="cpu")
    if args.prompt_tuning:
        from mmseq.checkpoint import apply_prompt_tuning

        apply_prompt_tuning(model, args.prompt_tuning, args.mmseq_model)
    use_context, use_boost = MMSEQ[condition]
    index = {id(clip): i for i, clip in enumerate(clips)}

    def decode(batch):
        own = [lists[index[id(clip)]] for clip in batch]
        extra = {}
        if use_context:
            extra["context"] = [args.context_join.join(words) for words in own]
        if use_boost:
            extra.update(boost=own, boost_weight=args.boost_weight)
        return model.transcribe([torch.from_numpy(clip.audio) for clip in batch], beam_size=settings.beam,
                                batch_size=settings.batch_size, task=args.task, **extra)

    return timed(decode, clips, settings, {"beam": settings.beam, "boost_weight": args.boost_weight if use_boost else 0,
                                           "context_join": args.context_join if use_context else None,
                                           "prompt_tuning": str(args.prompt_tuning) if args.prompt_tuning else None})


def run_faster_whisper(clips, lists, settings, args, condition):
    from faster_whisper import WhisperModel

    model = WhisperModel(str(settings.ct2_model), device="cpu", compute_type="float32", cpu_threads=settings.threads)
    index = {id(clip): i for i, clip in enumerate(clips)}

    def decode(batch):
        hyps = []
        for clip in batch:
            words = lists[index[id(clip)]]
            extra = {"fw-prompt": {"initial_prompt": ", ".join(words)},
                     "fw-hotwords": {"hotwords": " ".join(words)}}.get(condition, {})
            segments, _ = model.transcribe(clip.audio, beam_size=settings.beam, **FW_OPTIONS, **extra)
            hyps.append(" ".join(s.text.strip() for s in segments))
        return hyps

    return timed(decode, clips, settings, {"beam": settings.beam})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path, help="a manifest with a 'biasing' list per line (tools/biasing_lists.py)")
    parser.add_argument("--conditions", default="none,context,boost,both,fw-none,fw-prompt,fw-hotwords")
    parser.add_argument("--mmseq-model", type=Path, default=Path("exp/whisper-base"))
    parser.add_argument("--prompt-tuning", type=Path, help="a prompt-tuned folder applied to --mmseq-model (with --task)")
    parser.add_argument("--task", help="the route of --mmseq-model to decode with (a prompt-tuned one)")
    parser.add_argument("--ct2-model", type=Path, default=DEFAULT_CT2)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--boost-weight", type=float, default=1.0)
    parser.add_argument("--context-join", default=", ", help="what joins the listed words into the context text")
    parser.add_argument("--tag", default="", help="added to the per-clip files' names (runs of other settings)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path, default=Path("exp/biasing"))
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()][: args.limit]
    clips = load_clips(args.manifest, args.limit)
    lists = [row["biasing"] for row in rows]
    settings = Settings(beam=args.beam, threads=args.threads, batch_size=args.batch_size, ct2_model=args.ct2_model)
    args.out.mkdir(parents=True, exist_ok=True)
    for condition in args.conditions.split(","):
        runner = run_mmseq if condition in MMSEQ else run_faster_whisper
        run = runner(clips, lists, settings, args, condition)
        scores = biased_word_errors([c.text for c in clips], run.hyps, lists)
        line = {"manifest": str(args.manifest), "condition": condition, "list_words": round(sum(map(len, lists)) / len(lists), 1),
                **{k: round(v, 2) for k, v in scores.items() if k in ("b_wer", "u_wer", "wer")},
                "biased_words": scores["biased_words"], "rtfx": round(run.rtfx, 2), "decode_s": round(run.decode_s, 1), "cpu_s": round(run.cpu_s, 1),
                "load": [round(x, 2) for x in run.load_start + run.load_end], **run.settings}
        print(json.dumps(line), flush=True)
        with open(args.out / "biasing.jsonl", "a") as log:
            log.write(json.dumps(line) + "\n")
        with open(args.out / f"{args.manifest.stem}.{condition}{args.tag}.jsonl", "w") as per_clip:
            for clip, hyp, words in zip(clips, run.hyps, lists):
                per_clip.write(json.dumps({"id": clip.id, "ref": clip.text, "hyp": hyp, "listed": words}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
