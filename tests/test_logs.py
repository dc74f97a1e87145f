"""The training log: log.csv and TensorBoard event files read back with TensorBoard's own reader;
a progress bar that moves at every step."""

from __future__ import annotations

import csv
import re
import sys

import pytest

from mmseq.config import load_config
from mmseq.training.logs import RunLog
from mmseq.training.trainer import Trainer
from test_train import training_config

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_events(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})  # 0: keep every event
    events.Reload()
    return events


def test_a_run_writes_its_scalars_and_attention_images_to_tensorboard(tmp_path):
    config = training_config(tmp_path, count=8, randomness=False, valid=True, val_metric="wer", max_epochs=2)
    Trainer(load_config(config)).train()
    out = tmp_path / "exp"
    rows = list(csv.DictReader(open(out / "log.csv")))
    events = read_events(out / "tensorboard")
    tags = events.Tags()
    for tag in ("train/loss", "train/accuracy", "train/lr", "valid/loss", "valid/accuracy", "valid/wer", "valid/cer",
                "valid/substitutions"):
        assert tag in tags["scalars"], tag

    # The same figures as log.csv, at the same steps.
    for split, name, column in (("train", "loss", "loss"), ("train", "lr", "lr"), ("valid", "wer", "metric"),
                                ("valid", "loss", "loss")):
        expected = [(int(r["step"]), float(r[column])) for r in rows if r["split"] == split]
        found = [(e.step, e.value) for e in events.Scalars(f"{split}/{name}")]
        assert [s for s, _ in found] == [s for s, _ in expected]
        assert [v for _, v in found] == pytest.approx([v for _, v in expected], rel=1e-5)
    assert len(expected) == 2  # one validation per epoch

    # One attention image per validation, a real PNG.
    images = events.Images("valid/attention")
    assert [image.step for image in images] == [s for s, _ in expected]
    assert images[0].encoded_image_string.startswith(b"\x89PNG") and images[0].width > 100


def test_a_resumed_run_purges_the_events_after_its_checkpoint(tmp_path):
    first = RunLog(tmp_path)
    for step in range(1, 6):
        first.row({"split": "train", "step": step, "loss": float(step)})
    first.close()
    resumed = RunLog(tmp_path, resumed_step=3)  # the stopped run had checkpointed at step 3
    for step in (4, 5):
        resumed.row({"split": "train", "step": step, "loss": 10.0 + step})
    resumed.close()
    found = [(e.step, e.value) for e in read_events(tmp_path / "tensorboard").Scalars("train/loss")]
    assert found == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0)]
    assert len(list(csv.DictReader(open(tmp_path / "log.csv")))) == 7  # the CSV keeps every row written


def test_without_tensorboard_only_the_csv_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    log = RunLog(tmp_path)
    log.row({"split": "train", "step": 1, "loss": 2.5, "lr": 0.1})
    assert "tensorboard is not installed" in capsys.readouterr().err
    assert not (tmp_path / "tensorboard").exists()
    assert [r["loss"] for r in csv.DictReader(open(tmp_path / "log.csv"))] == ["2.5"]


def test_tensorboard_can_be_turned_off(tmp_path):
    RunLog(tmp_path, tensorboard=False).row({"split": "train", "step": 1, "loss": 1.0})
    assert (tmp_path / "log.csv").is_file() and not (tmp_path / "tensorboard").exists()


def test_the_training_bar_moves_at_every_step(tmp_path, capsys):
    """stderr is captured here, not a terminal: the bar must still be drawn at every batch."""
    config = training_config(tmp_path, count=12, randomness=False, max_epochs=1, tensorboard=False)
    trainer = Trainer(load_config(config))
    trainer.train()
    batches = trainer.batches_per_epoch
    assert batches >= 4
    drawn = [int(n) for n in re.findall(rf"epoch 1:[^\r\n]*?\| *(\d+)/{batches} ", capsys.readouterr().err)]
    assert set(drawn) == set(range(batches + 1)) and drawn[-1] == batches  # every step, and it ends full
