"""Data-parallel training: the sampler's shards, and two gloo processes on CPU (DDP, and FSDP)
ending with the weights of one process that takes the same global batch per step."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch

from mmseq.config import load_config
from mmseq.data.batching import BucketBatchSampler
from mmseq.training.trainer import Trainer
from test_train import ROOT, training_config, weights

COUNT, MAX_EXAMPLES = 19, 3  # 7 batches: six of 3 and one of 1, so two ranks share the last one


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_shards_cover_every_example_once_with_equal_counts(world_size):
    lengths = [1.0 + (i * 7 % 11) for i in range(23)]
    for epoch in range(4):
        shards = []
        for rank in range(world_size):
            sampler = BucketBatchSampler(lengths, 6.0, 3, seed=2, rank=rank, world_size=world_size)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
            again = BucketBatchSampler(lengths, 6.0, 3, seed=2, rank=rank, world_size=world_size)
            again.set_epoch(epoch)
            assert list(again) == shards[-1]  # deterministic per epoch
        assert len({len(shard) for shard in shards}) == 1  # no rank waits for another
        seen = sorted(i for shard in shards for batch in shard for i in batch)
        assert seen == list(range(len(lengths)))  # no overlap, no loss
        for shard in shards:
            for batch in shard:
                if batch:
                    assert max(lengths[i] for i in batch) * len(batch) <= 6.0 or len(batch) == 1


def seed_with_an_empty_piece(manifest: Path) -> int:
    """A seed whose first epoch hands rank 1 an empty batch (the single-example batch comes last),
    so the test also covers a rank that must join the gradient exchange with nothing to learn."""
    lengths = [soundfile.info(str(manifest.parent / json.loads(line)["audio"])).duration
               for line in manifest.read_text().splitlines()]
    for seed in range(100):
        sampler = BucketBatchSampler(lengths, 100.0, MAX_EXAMPLES, seed=seed, rank=1, world_size=2)
        if [] in sampler.epoch_batches():
            return seed
    raise AssertionError("no seed gives an empty batch; the corpus or sampler changed")


def torchrun(config: Path, *overrides: str) -> None:
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "mmseq", "train", "--nproc", "2", str(config), *overrides],
                            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def rows(out: Path, split: str) -> list[dict]:
    with open(out / "log.csv") as file:
        return [row for row in csv.DictReader(file) if row["split"] == split]


def assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        # Attention key biases get only rounding noise as gradient (softmax ignores a constant
        # shift), which Adam turns into full-size moves: their values are meaningless to compare.
        if "qkv.bias" in name or "cross_kv.bias" in name:
            continue
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def run_both(tmp_path: Path, *overrides: str) -> tuple[Path, Path]:
    """The same training as two processes (one batch each per step) and as one process that
    accumulates two batches per step; returns both output folders."""
    path = training_config(tmp_path, count=COUNT, randomness=False, valid=True)
    seed = seed_with_an_empty_piece(Path(load_config(path).data.train))
    settings = [f"trainer.seed={seed}", f"data.max_batch_examples={MAX_EXAMPLES}", *overrides]
    torchrun(path, *settings, f"output_dir={tmp_path / 'two'}")
    Trainer(load_config(path, [*settings, "trainer.accumulate=2", f"output_dir={tmp_path / 'one'}"])).train()
    return tmp_path / "two", tmp_path / "one"


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    two, one = run_both(tmp_path)
    assert_same_weights(weights(two / "last"), weights(one / "last"))
    # Rank 0 alone logs: each step once. Validation sums both ranks' shares of the set.
    assert [row["step"] for row in rows(two, "train")] == [row["step"] for row in rows(one, "train")]
    for got, expected in zip(rows(two, "valid"), rows(one, "valid"), strict=True):
        assert float(got["loss"]) == pytest.approx(float(expected["loss"]), rel=1e-4)
        assert float(got["accuracy"]) == pytest.approx(float(expected["accuracy"]), abs=1e-3)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == sorted(
        p.name for p in (one / "checkpoints").iterdir())


@pytest.mark.slow
def test_fsdp_two_processes_equal_one_process(tmp_path):
    two, one = run_both(tmp_path, "trainer.fsdp=true")
    assert_same_weights(weights(two / "last"), weights(one / "last"))
    state = json.loads(((two / "last") / "trainer_state.json").read_text())
    assert state["sharded"] and state["world_size"] == 2
