"""Make multitask manifests from per-task corpora: every line keeps its own fields, gains a "task"
field, and its file paths become absolute, so lines of any corpus can sit in one file.

    python recipes/multitask/prepare.py --out data/multitask \\
        --corpus asr=data/synth_speech --corpus text=data/synth_text --corpus caption=data/synth_caption \\
        --limit asr=1000 --limit text=4000 --limit caption=600 --valid-limit 100

Each corpus folder holds train.jsonl, valid.jsonl and test.jsonl. Writes, under --out:
    <task>/train.jsonl, <task>/valid.jsonl, <task>/test.jsonl   the first --limit train lines (and
                                                                 --valid-limit valid lines) of each task
    train.jsonl, valid.jsonl                                      the tasks' lines together (multitask training)

A single-task model trained on <task>/train.jsonl sees exactly the examples the multitask model sees
for that task, which is what a fair comparison needs. Test files are whole: score each task on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmseq.data.manifest import FIELD_TYPES, read_manifest

PATH_FIELDS = [name for name, kind in FIELD_TYPES.items() if kind == "path"]


def task_lines(manifest: Path, task: str, limit: int | None) -> list[str]:
    """The first ``limit`` lines of a manifest as JSON with ``"task"`` and absolute paths."""
    examples, _ = read_manifest(manifest)  # resolves paths against the manifest's folder; bad lines raise
    lines = []
    for example in examples[:limit]:
        example = {k: v for k, v in example.items() if not k.startswith("_")}
        lines.append(json.dumps({**example, "task": task}))
    return lines


def pairs(values: list[str], what: str) -> dict[str, str]:
    result = {}
    for value in values:
        if "=" not in value:
            raise SystemExit(f"--{what} {value!r}: expected TASK=VALUE")
        key, item = value.split("=", 1)
        result[key] = item
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/multitask"), help="output folder (default: %(default)s)")
    parser.add_argument("--corpus", action="append", default=[], metavar="TASK=DIR", help="a task's corpus folder")
    parser.add_argument("--limit", action="append", default=[], metavar="TASK=N", help="train lines kept of a task")
    parser.add_argument("--valid-limit", type=int, default=None, help="valid lines kept of each task (default: all)")
    args = parser.parse_args(argv)
    corpora, limits = pairs(args.corpus, "corpus"), {k: int(v) for k, v in pairs(args.limit, "limit").items()}
    if not corpora:
        raise SystemExit("give at least one --corpus TASK=DIR")
    together = {"train": [], "valid": []}
    for task, folder in corpora.items():
        (args.out / task).mkdir(parents=True, exist_ok=True)
        for split in ("train", "valid", "test"):
            limit = limits.get(task) if split == "train" else args.valid_limit if split == "valid" else None
            lines = task_lines(Path(folder) / f"{split}.jsonl", task, limit)
            (args.out / task / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
            if split in together:
                together[split] += lines
            print(f"{args.out / task / f'{split}.jsonl'}: {len(lines)} lines", file=sys.stderr)
    for split, lines in together.items():
        (args.out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        print(f"{args.out / f'{split}.jsonl'}: {len(lines)} lines of {len(corpora)} tasks", file=sys.stderr)


if __name__ == "__main__":
    main()
