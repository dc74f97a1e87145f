"""Checkpoint averaging: the mean of the weights, the last or best N of a run, and refusals."""

from __future__ import annotations

import mmseq
import json

import pytest
import torch

from conftest import TINY_ENCODER, make_model
from mmseq.training.average import average_checkpoints, select_checkpoints
from mmseq.cli import main
from mmseq.errors import CheckpointError, ConfigError
from mmseq.checkpoint import load


def fake_run(folder, char_tokenizer, steps=(10, 20, 30), best=((0.5, 20), (0.7, 10))):
    """A training output folder with checkpoints of different random weights."""
    for number, step in enumerate(steps):
        checkpoint = folder / "checkpoints" / f"step-{step:08d}"
        mmseq.save(make_model(char_tokenizer, seed=number), checkpoint)
        state = {"step": step, "best": [[metric, f"step-{s:08d}"] for metric, s in best]}
        (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    return folder


def test_average_is_the_mean_of_the_weights(tmp_path, char_tokenizer):
    run = fake_run(tmp_path / "run", char_tokenizer)
    folders = select_checkpoints(run, last=3)
    out = average_checkpoints(folders, tmp_path / "avg")
    averaged = load(out).state_dict()
    parts = [load(folder).state_dict() for folder in folders]
    for name, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(p[name] for p in parts) / 3)
        else:
            assert torch.equal(value, parts[-1][name])
    assert not torch.equal(averaged["decoder.embed.weight"], parts[0]["decoder.embed.weight"])
    assert load(out).transcribe([torch.zeros(8000)]) is not None  # an ordinary, usable checkpoint


def test_last_and_best_selection(tmp_path, char_tokenizer):
    run = fake_run(tmp_path / "run", char_tokenizer)
    assert [p.name for p in select_checkpoints(run, last=2)] == ["step-00000020", "step-00000030"]
    assert [p.name for p in select_checkpoints(run, best=2)] == ["step-00000020", "step-00000010"]
    with pytest.raises(CheckpointError, match="keep_last"):
        select_checkpoints(run, last=4)
    with pytest.raises(CheckpointError, match="keep_best"):
        select_checkpoints(run, best=3)
    with pytest.raises(ConfigError):
        select_checkpoints(run, last=1, best=1)
    with pytest.raises(CheckpointError, match="no checkpoints"):
        select_checkpoints(tmp_path / "empty")


def test_checkpoints_of_different_models_are_refused(tmp_path, char_tokenizer):
    mmseq.save(make_model(char_tokenizer), tmp_path / "a")
    mmseq.save(make_model(char_tokenizer, encoder=dict(TINY_ENCODER, dim=16, heads=2)), tmp_path / "b")
    with pytest.raises(CheckpointError, match="different model"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "avg")


def test_command_line(tmp_path, char_tokenizer, capsys):
    run = fake_run(tmp_path / "run", char_tokenizer)
    assert main(["average", str(run), "--best", "2", "--out", str(tmp_path / "avg")]) == 0
    assert "averaged 2 checkpoints" in capsys.readouterr().out
    assert (tmp_path / "avg" / "model.safetensors").is_file()
    assert main(["average", str(run / "checkpoints" / "step-00000010"), "--out", str(tmp_path / "one")]) == 0
    assert main(["average", str(run), "--last", "9", "--out", str(tmp_path / "no")]) == 2
