"""Training end to end on a tiny corpus, and an exact resume: a run stopped after two epochs and
extended to three ends with the same weights as a run of three epochs from the start (on CPU)."""

import csv
import json
import shutil

import torch
from safetensors.torch import load_file

from conftest import write_train_config
from mmseq.config import load_config
from mmseq.training.state import list_checkpoints
from mmseq.training.trainer import train


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def steps_logged(out):
    with open(out / "log.csv") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row["split"] == "train"]


def test_training_writes_checkpoints_logs_and_config(trained):
    _, out, _ = trained
    checkpoints = list_checkpoints(out)
    assert checkpoints, "no checkpoint written"
    last = (out / "last").resolve()
    assert last == checkpoints[-1].resolve()
    assert (out / "best").exists() and (out / "config.yaml").is_file() and (out / "log.csv").is_file()
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["epoch"] == 2 and state["step"] > 0
    assert {"config.json", "model.safetensors", "trainer_state.json"} <= {p.name for p in last.iterdir()}
    assert steps_logged(out) == list(range(1, state["step"] + 1))  # log_every 1: every step once


def test_resume_continues_and_matches_an_uninterrupted_run(trained, tmp_path, capfd):
    config_path, out, manifest = trained
    # Resume a copy of the two-epoch run (the shared fixture stays as it was).
    resumed_folder = tmp_path / "resumed"
    shutil.copytree(config_path.parent, resumed_folder, symlinks=True)
    resumed_config = write_train_config(resumed_folder, manifest)
    before = json.loads(((resumed_folder / "out" / "last") / "trainer_state.json").read_text())["step"]
    capfd.readouterr()
    train(load_config(resumed_config, ["trainer.max_epochs=3"]))
    assert "resumed from" in capfd.readouterr().err
    resumed_out = resumed_folder / "out"
    state = json.loads(((resumed_out / "last") / "trainer_state.json").read_text())
    assert state["epoch"] == 3 and state["step"] > before
    steps = steps_logged(resumed_out)
    assert steps == list(range(1, state["step"] + 1))  # the step counter went on, no repeats

    straight = write_train_config(tmp_path / "straight", manifest, max_epochs=3)
    train(load_config(straight))
    straight_state = json.loads(((tmp_path / "straight" / "out" / "last") / "trainer_state.json").read_text())
    assert straight_state["step"] == state["step"]
    expected, got = weights(tmp_path / "straight" / "out" / "last"), weights(resumed_out / "last")
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"


def test_a_finished_run_does_not_train_again(trained, tmp_path):
    config_path, _, manifest = trained
    folder = tmp_path / "again"
    shutil.copytree(config_path.parent, folder, symlinks=True)
    before = weights(folder / "out" / "last")
    train(load_config(write_train_config(folder, manifest)))  # still max_epochs=2: nothing to do
    after = weights(folder / "out" / "last")
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_resume_from_the_middle_of_an_epoch(trained, tmp_path):
    _, out, manifest = trained
    per_epoch = json.loads(((out / "last") / "trainer_state.json").read_text())["step"] // 2
    # Stopped by max_steps part way through the second epoch, then given the full three epochs.
    stop = per_epoch + per_epoch // 2
    config = write_train_config(tmp_path / "middle", manifest, max_epochs=3)
    train(load_config(config, [f"trainer.max_steps={stop}"]))
    state = json.loads(((tmp_path / "middle" / "out" / "last") / "trainer_state.json").read_text())
    assert state["step"] == stop
    train(load_config(config))
    state = json.loads(((tmp_path / "middle" / "out" / "last") / "trainer_state.json").read_text())
    assert state["step"] == 3 * per_epoch and state["epoch"] == 3
    assert steps_logged(tmp_path / "middle" / "out") == list(range(1, 3 * per_epoch + 1))
    straight = write_train_config(tmp_path / "straight", manifest, max_epochs=3)
    train(load_config(straight))
    expected, got = weights(tmp_path / "straight" / "out" / "last"), weights(tmp_path / "middle" / "out" / "last")
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"{len(different)} tensors differ after a mid-epoch resume, e.g. {different[:3]}"
