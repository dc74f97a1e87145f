"""A speech corpus for contextual biasing: sentences with names, and contexts that list them among distractors.

Names are the proper nouns of Debian's ``wamerican`` word list (``/usr/share/dict/american-english``,
fetched with ``apt-get download`` and unpacked under --out/sources, not installed): capitalised
words of letters only whose lower-case form is not an ordinary word there, and whose plural or
singular is not another name (so "Victorian" and "Victorians" never sit on two sides of a split).
About 8,900 remain. They are shuffled and split into three disjoint pools: test names, valid names
and train names; a test name never occurs anywhere in the training text (checked by
:func:`check_splits`, which this script runs before it synthesizes anything).

Each sentence is one of a few dozen carrier templates with one or two names in it ("please call
{a} tomorrow", "{a} and {b} are late again"). Every line carries a ``"context"``: the utterance's
names among distractors drawn from the same pool, shuffled. In train and valid the number of
distractors is drawn from 0 to ``MAX_DISTRACTORS`` and, in one line of ``UNLISTED_SHARE``, the
utterance's own names are left out of the list, so that copying a name is learned as conditional
on hearing it. Test contexts hold the names and as many distractors (``test_context.jsonl``) or 10
times as many (``test_context_x10.jsonl``); ``test.jsonl`` has none. ``test_seen`` is the same with
train names (the in-vocabulary split). Each line also keeps its ``"names"``, for ``score.py``.

Audio: espeak-ng voices, speeds, pitches and noise as ``recipes/synth_speech/prepare.py`` makes them
(its helpers are imported from there); about half of each held-out split is spoken by a voice
training never heard.

Writes, under --out (default data/synth_bias): train.jsonl, valid.jsonl, test.jsonl,
test_context.jsonl, test_context_x10.jsonl, test_seen.jsonl, test_seen_context.jsonl, wav/,
names.json (the three pools) and settings.json (a rerun with the same settings does nothing).

    python recipes/synth_bias/prepare.py --out data/synth_bias --jobs 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import random
import re
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm



def _sibling(path: Path, name: str):
    """Import another recipe's script (as ``name``, so it never shadows or is shadowed by this one)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# recipes/synth_speech/prepare.py: fetch_package, the voices, utterance_plans, render
speech = _sibling(Path(__file__).resolve().parents[1] / "synth_speech" / "prepare.py", "synth_speech_prepare")

CORPUS_VERSION = 1
WORD_LIST = "usr/share/dict/american-english"
MAX_DISTRACTORS = 8      # train and valid: 0 to 8 other names in the list
UNLISTED_SHARE = 0.15    # train and valid: lines whose list leaves out the utterance's own names
TEST_X = 10              # test_context_x10: ten distractors per name

# {a} and {b} are names. Ordinary words only; check_splits makes sure no name is one of them.
TEMPLATES = [
    "please call {a} tomorrow", "{a} is waiting outside", "have you seen {a} today",
    "i sent the letter to {a}", "the next speaker is {a}", "ask {a} about the report",
    "my friend {a} lives near the river", "we are meeting {a} at noon", "{a} said it would rain",
    "tell {a} that dinner is ready", "the package is for {a}", "did {a} finish the work",
    "i think {a} knows the answer", "give the keys to {a}", "this book was written by {a}",
    "{a} will be here soon", "nobody has heard from {a}", "the new manager is called {a}",
    "put {a} on the list", "we drove to {a} last summer", "{a} is my favourite",
    "the train to {a} is late", "send a copy to {a} please", "{a} won the first prize",
    "{a} and {b} are late again", "{a} met {b} at the station", "i called {a} before {b}",
    "{a} works with {b} every day", "the meeting is between {a} and {b}", "tell {a} to wait for {b}",
    "{a} sent a message to {b}", "we invited {a} and {b} to the party", "{a} is older than {b}",
    "after {a} we will visit {b}", "both {a} and {b} agreed", "{a} gave the book to {b}",
]


def names_of(words: list[str]) -> list[str]:
    """The proper nouns of a word list, lower-cased: capitalised words of letters only (3 to 10)
    whose lower-case form is no ordinary word of the list and whose singular (``-s``, ``-es``) is
    not another name, sorted."""
    ordinary = {word for word in words if word.islower()}
    capitalised = {word for word in words if re.fullmatch(r"[A-Z][a-z]{2,9}", word) and word.lower() not in ordinary}
    names = {word for word in capitalised if not (word.endswith("s") and (word[:-1] in capitalised or
                                                                         word[:-2] in capitalised))}
    return sorted(word.lower() for word in names)


def split_names(names: list[str], num_test: int, num_valid: int, seed: int) -> dict[str, list[str]]:
    """Disjoint pools of names: ``test``, ``valid`` and the rest ``train``."""
    pool = sorted(set(names))
    random.Random(seed).shuffle(pool)
    if len(pool) < num_test + num_valid + 100:
        raise RuntimeError(f"only {len(pool)} names, too few for {num_test} test and {num_valid} valid names")
    return {"test": pool[:num_test], "valid": pool[num_test:num_test + num_valid],
            "train": pool[num_test + num_valid:]}


def make_lines(pool: list[str], count: int, rng: random.Random, distractors, unlisted_share: float) -> list[dict]:
    """``count`` lines of sentences over the names of ``pool``, each name used about equally often
    (in turn through a shuffled copy of the pool), with ``text``, ``names``, ``context`` (the names
    and ``distractors(n_names)`` others of the pool, shuffled; without the names in a share
    ``unlisted_share`` of lines) and the capitalised ``spoken`` text."""
    order: list[str] = []
    lines = []
    for _ in range(count):
        template = rng.choice(TEMPLATES)
        slots = 2 if "{b}" in template else 1
        names = []
        while len(names) < slots:
            if not order:
                order = list(pool)
                rng.shuffle(order)
            name = order.pop()
            if name not in names:
                names.append(name)
        text = template.format(a=names[0], b=names[-1])
        spoken = template.format(a=names[0].capitalize(), b=names[-1].capitalize())
        wanted = distractors(len(names))
        others = [n for n in rng.sample(pool, wanted + len(names)) if n not in names][:wanted]
        context = others + ([] if rng.random() < unlisted_share else names)
        rng.shuffle(context)
        lines.append({"text": text, "spoken": spoken, "names": names, "context": context})
    return lines


def make_splits(pools: dict[str, list[str]], sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    """The lines of every split (see the module's text) from the name pools."""
    rng = random.Random(seed)

    def drawn(_):
        return rng.randint(0, MAX_DISTRACTORS)

    splits = {"train": make_lines(pools["train"], sizes["train"], rng, drawn, UNLISTED_SHARE),
              "valid": make_lines(pools["valid"], sizes["valid"], rng, drawn, UNLISTED_SHARE)}
    seen_names = sorted({name for line in splits["train"] for name in line["names"]})
    for split, pool in (("test", pools["test"]), ("test_seen", seen_names)):
        lines = make_lines(pool, sizes[split], rng, lambda n: n * TEST_X, 0.0)
        for line in lines:
            # The equal-distractor context: the names and as many of the x10 list's distractors.
            others = [name for name in line["context"] if name not in line["names"]]
            line["context_x10"] = line["context"]
            line["context"] = sorted(line["names"] + others[: len(line["names"])], key=line["context"].index)
        splits[split] = lines
    return splits


def check_splits(splits: dict[str, list[dict]], pools: dict[str, list[str]]) -> dict:
    """Raise when a held-out name occurs in training text or a context breaks the rules; returns
    the counts that show it (printed and kept in settings.json)."""
    train_words = {word for line in splits["train"] for word in line["text"].split()}
    train_words |= {name for line in splits["train"] for name in line["context"]}
    template_words = {word for t in TEMPLATES for word in re.sub(r"\{[ab]\}", " ", t).split()}
    for split in ("valid", "test"):
        leaked = sorted({n for line in splits[split] for n in line["names"]} & train_words)
        if leaked:
            raise RuntimeError(f"{split} names occur in the training text: {leaked[:5]}")
        if set(pools[split]) & set(pools["train"]):
            raise RuntimeError(f"the {split} and train name pools overlap")
    clash = sorted(template_words & {n for pool in pools.values() for n in pool})
    if clash:
        raise RuntimeError(f"names that are also carrier words: {clash[:5]}")
    for split, lines in splits.items():
        for line in lines:
            if len(set(line["context"])) != len(line["context"]):
                raise RuntimeError(f"{split}: a context lists a name twice: {line['context']}")
            if split.startswith("test"):
                listed = [n for n in line["context"] if n in line["names"]]
                if sorted(listed) != sorted(line["names"]) or len(line["context"]) != 2 * len(line["names"]):
                    raise RuntimeError(f"{split}: a context is not the names and as many distractors: {line}")
                if len(line["context_x10"]) != (TEST_X + 1) * len(line["names"]):
                    raise RuntimeError(f"{split}: a x{TEST_X} context is not the names and {TEST_X}x distractors")
    test_names = [n for line in splits["test"] for n in line["names"]]
    return {"train_words": len(train_words), "test_names": len(test_names),
            "test_names_in_train_text": sum(n in train_words for n in test_names),
            "test_seen_names_in_train_text": sum(n in train_words for line in splits["test_seen"] for n in line["names"]),
            "distinct_train_names_spoken": len({n for line in splits["train"] for n in line["names"]})}


def read_names(out: Path) -> list[str]:
    folder = speech.fetch_package("wamerican", out / "sources")
    return names_of((folder / WORD_LIST).read_text(encoding="utf-8").split())


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/synth_bias"), help="output folder (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=4000, help="train utterances (default: %(default)s)")
    parser.add_argument("--num-valid", type=int, default=200, help="valid utterances (default: %(default)s)")
    parser.add_argument("--num-test", type=int, default=300, help="test utterances, unseen names (default: %(default)s)")
    parser.add_argument("--num-test-seen", type=int, default=200, help="test utterances, train names (default: %(default)s)")
    parser.add_argument("--test-names", type=int, default=1000, help="names held out for test (default: %(default)s)")
    parser.add_argument("--valid-names", type=int, default=500, help="names held out for valid (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of names, sentences, voices (default: %(default)s)")
    parser.add_argument("--noise-fraction", type=float, default=0.3, help="share of noisy utterances (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel synthesis processes (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    out = arguments.out
    sizes = {"train": arguments.num_train, "valid": arguments.num_valid, "test": arguments.num_test,
             "test_seen": arguments.num_test_seen}
    settings = {"version": CORPUS_VERSION, **sizes, "test_names": arguments.test_names,
                "valid_names": arguments.valid_names, "seed": arguments.seed,
                "noise_fraction": arguments.noise_fraction}
    try:
        if json.loads((out / "settings.json").read_text())["settings"] == settings:
            print(f"{out} already holds this corpus (settings.json matches); nothing to do")
            return
    except (OSError, ValueError, KeyError):
        pass
    speech.require_espeak()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        pools = split_names(read_names(out), arguments.test_names, arguments.valid_names, arguments.seed)
        splits = make_splits(pools, sizes, arguments.seed)
        check = check_splits(splits, pools)
    except RuntimeError as error:
        sys.exit(f"error: {error}")
    print(f"names: {', '.join(f'{k} {len(v)}' for k, v in pools.items())}; check: {json.dumps(check)}")
    (out / "settings.json").unlink(missing_ok=True)  # an interrupted rebuild must not look finished
    shutil.rmtree(out / "wav", ignore_errors=True)
    (out / "wav").mkdir(parents=True)
    plans = speech.utterance_plans({split: [line["spoken"] for line in lines] for split, lines in splits.items()},
                                   arguments.seed, arguments.noise_fraction)
    durations = {}
    with multiprocessing.Pool(max(arguments.jobs, 1), initializer=speech._worker_start) as pool:
        work = [(plan, out) for plan in plans]
        for utterance_id, duration in tqdm(pool.imap_unordered(speech._render_star, work, chunksize=8),
                                           total=len(work), desc="synthesizing", unit="utt"):
            durations[utterance_id] = duration
    files = {}
    for plan in plans:
        split, index = plan["split"], int(plan["id"].rsplit("_", 1)[1])
        line = splits[split][index]
        row = {"id": plan["id"], "audio": f"wav/{plan['id']}.wav", "text": line["text"],
               "duration": durations[plan["id"]], "names": line["names"]}
        if split in ("train", "valid"):
            files.setdefault(split, []).append({**row, "context": line["context"]})
        else:
            files.setdefault(split, []).append(row)
            files.setdefault(f"{split}_context", []).append({**row, "context": line["context"]})
            if split == "test":
                files.setdefault("test_context_x10", []).append({**row, "context": line["context_x10"]})
    for name, rows in files.items():
        with open(out / f"{name}.jsonl", "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    (out / "names.json").write_text(json.dumps(pools) + "\n")
    (out / "settings.json").write_text(json.dumps({"settings": settings, "check": check}, indent=1) + "\n")
    hours = sum(durations.values()) / 3600
    print(f"done in {time.perf_counter() - start:.1f} s: "
          + ", ".join(f"{name} {len(rows)}" for name, rows in files.items()) + f"; {hours:.2f} h of audio")


if __name__ == "__main__":
    main()
