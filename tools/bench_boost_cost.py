"""What boosting a list costs in decoding time: each batch decoded without the list and with it
(``ContextBoost``, shallow fusion over the list's prefix tree) one after the other, so that the
machine's drift falls on both alike; the sums, their ratio, and the tree builds' share.

    python tools/bench_boost_cost.py exp/biasing/lists/cv100_n1000.jsonl --mmseq-model exp/whisper-base

The manifest is one of ``tools/biasing_lists.py`` (a ``biasing`` list per line). Run it alone on
the machine; one batch of warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_whisper import load_clips  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--mmseq-model", type=Path, default=Path("exp/whisper-base"))
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--boost-weight", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)

    import torch

    import mmseq
    from mmseq.decoding.scorers import boost

    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()][: args.limit]
    clips = load_clips(args.manifest, args.limit)
    model = mmseq.load(args.mmseq_model, device="cpu")
    build = [0.0]
    init = boost.ContextBoost.__init__

    def timed_init(self, *a, **k):
        start = time.perf_counter()
        init(self, *a, **k)
        build[0] += time.perf_counter() - start

    boost.ContextBoost.__init__ = timed_init
    spent = {"none": 0.0, "boost": 0.0}
    batches = range(0, len(clips), args.batch_size)
    for number, first in enumerate([0, *batches]):  # the first: warm-up
        audio = [torch.from_numpy(c.audio) for c in clips[first:first + args.batch_size]]
        lists = [row["biasing"] for row in rows[first:first + args.batch_size]]
        for condition in ("none", "boost") if number % 2 else ("boost", "none"):
            extra = {"boost": lists, "boost_weight": args.boost_weight} if condition == "boost" else {}
            start = time.perf_counter()
            model.transcribe(audio, beam_size=args.beam, batch_size=args.batch_size, **extra)
            if number:
                spent[condition] += time.perf_counter() - start
            elif condition == "boost":
                build[0] = 0.0
    words = sum(len(row["biasing"]) for row in rows) / len(rows)
    print(json.dumps({"manifest": str(args.manifest), "clips": len(clips), "list_words": round(words, 1),
                      "none_s": round(spent["none"], 1), "boost_s": round(spent["boost"], 1),
                      "boost_cost_percent": round(100 * (spent["boost"] / spent["none"] - 1), 1),
                      "tree_build_s": round(build[0], 2), "beam": args.beam, "threads": args.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
