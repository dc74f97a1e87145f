"""Decode a manifest and score it with the task's metrics; write ``metrics.json`` and hypotheses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.batching import BucketBatchSampler
from .tasks import ExampleDataset


def evaluate(model, manifest, out_dir, batch_size: int = 16, prompt=None, num_workers: int = 2,
             **options) -> dict:
    """Metrics of ``model`` on ``manifest``. Unreadable lines and files are skipped, reported on
    stderr and counted in ``metrics["skipped"]``; nothing else is lost."""
    from .data.files import check_output_folder
    check_output_folder(out_dir, "output folder")  # before decoding: a bad --out must not lose the work
    task = model.task
    examples, errors = task.read(manifest, training=False, skip_errors=True)
    lengths = [task.length(e) for e in examples]
    sampler = BucketBatchSampler(lengths, float("inf"), batch_size, shuffle=False,
                                 groups=[task.group(e) for e in examples])
    loader = DataLoader(ExampleDataset(task, examples, training=False), batch_sampler=sampler,
                        collate_fn=task.collate, num_workers=num_workers)
    skipped = [str(e) for e in errors]
    rows = []
    for batch in tqdm(loader, desc="decoding", unit="batch"):
        skipped += batch["errors"]
        if not batch["size"]:
            continue
        texts = model.decode_texts(batch, prompt=prompt, **options)
        rows += [{"id": i, "hypothesis": h, "references": r} for i, h, r in zip(batch["ids"], texts, batch["references"])]
    for error in skipped:
        print(f"mmseq: skipped: {error}", file=sys.stderr)
    metrics = task.score([r["references"] for r in rows], [r["hypothesis"] for r in rows]) if rows else {}
    metrics.update(examples=len(rows), skipped=len(skipped))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    with open(out_dir / "hypotheses.jsonl", "w") as file:
        for row in sorted(rows, key=lambda r: r["id"]):
            file.write(json.dumps(row) + "\n")
    return metrics
