"""Decode examples and score them: the one loop that validation and ``mmseq eval`` share."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..decoding.lm import with_lm
from ..data.batching import BucketBatchSampler
from ..tasks import ExampleDataset, TaskTable


@dataclass
class Decoded:
    rows: list[dict] = field(default_factory=list)  # {"id", "hypothesis", "references"} per example decoded
    sums: list[float] = field(default_factory=lambda: [0.0] * 4)  # loss sum, examples, correct, tokens
    skipped: list[str] = field(default_factory=list)  # "FILE:LINE: reason" of each unreadable example


@torch.no_grad()
def decode_examples(model, table, examples: list[dict], budget: float, max_examples: int | None,
                    num_workers: int = 0, decode: bool = True, losses: bool = False, dtype=None,
                    desc: str = "decoding", progress: bool = True, warn=None, on_rows=None, **options) -> Decoded:
    """Decode (and, with ``losses``, score the teacher-forced loss of) ``examples`` of the route
    table ``table``, in length-bucketed batches of at most ``budget`` length units and
    ``max_examples`` examples. ``options`` go to ``model.decode_texts`` (``beam_size``, ``prompt``,
    ``lm``, ...). An unreadable example is left out, reported through ``warn`` and listed in
    ``skipped``. ``on_rows(rows)`` sees each batch's rows as they are decoded."""
    lengths = [table.length(e) for e in examples]
    sampler = BucketBatchSampler(lengths, budget, max_examples, shuffle=False,
                                 groups=[table.group(e) for e in examples])
    loader = DataLoader(ExampleDataset(table, examples, training=False), batch_sampler=sampler,
                        collate_fn=table.collate, num_workers=num_workers, generator=torch.Generator().manual_seed(0))
    device = model.device
    out, sums = Decoded(), torch.zeros(4, dtype=torch.float64, device=device)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        for error in batch["errors"]:
            if warn is not None:
                warn(f"skipped: {error}")
        out.skipped += batch["errors"]
        if not batch["size"]:
            continue
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if losses:
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                result = model(batch)
            sums += torch.stack([result["loss_sum"].double(), torch.tensor(float(result["examples"]),
                                 dtype=torch.float64, device=device), result["correct"].double(),
                                 result["tokens"].double()])
        if decode:
            texts = model.decode_texts(batch, **options)
            rows = [{"id": i, "hypothesis": h, "references": r}
                    for i, h, r in zip(batch["ids"], texts, batch["references"])]
            out.rows += rows
            if on_rows is not None:
                on_rows(rows)
    out.sums = sums.tolist()
    return out


def score_rows(table, rows: list[dict]) -> dict:
    """The tasks' metrics of decoded rows (each task's own on its own rows)."""
    if not rows:
        return {}
    return table.score([row["references"] for row in rows], [row["hypothesis"] for row in rows])


def evaluate(model, manifest, out_dir, batch_size: int = 16, num_workers: int = 2, task: str | None = None,
             **options) -> dict:
    """Metrics of ``model`` on ``manifest``: its lines may be of any of the model's tasks (a
    line's ``task`` field, or its input field, says which), or all of route ``task`` when given.
    Unreadable lines and files are skipped, reported on stderr and counted in
    ``metrics["skipped"]``; nothing else is lost. Writes ``metrics.json`` and
    ``hypotheses.jsonl`` to ``out_dir``."""
    from ..data.files import check_output_folder
    check_output_folder(out_dir, "output folder")  # before decoding: a bad --out must not lose the work
    options = with_lm(options, model)
    table = model.task if task is None else TaskTable({task: model.route(task).task})
    examples, errors = table.read(manifest, training=False, skip_errors=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hypotheses = out_dir / "hypotheses.jsonl"
    with open(hypotheses.with_suffix(".partial.jsonl"), "w") as partial:  # as they come: a killed run keeps them
        def write(rows):
            partial.write("".join(json.dumps(row) + "\n" for row in rows))
            partial.flush()

        decoded = decode_examples(model, table, examples, float("inf"), batch_size, num_workers, on_rows=write,
                                  **options)
    skipped = [str(e) for e in errors] + decoded.skipped
    for error in skipped:
        print(f"mmseq: skipped: {error}", file=sys.stderr)
    metrics = score_rows(table, decoded.rows)
    metrics.update(examples=len(decoded.rows), skipped=len(skipped))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    with open(hypotheses.with_suffix(".partial.jsonl"), "w") as file:  # the same rows, sorted by id
        for row in sorted(decoded.rows, key=lambda r: r["id"]):
            file.write(json.dumps(row) + "\n")
    hypotheses.with_suffix(".partial.jsonl").replace(hypotheses)
    return metrics
