"""Faults: a process killed while it writes a checkpoint, corrupt checkpoint files, a full disk,
and two runs pointed at the same output folder. Nothing that was saved before may be lost.

A killed writer is a forked copy of this test process (torch is already imported, so a fork costs
milliseconds) that is sent SIGKILL, either at a random moment or at a chosen step inside
``Seq2Seq.save``. (The trainer's own kill-and-resume exactness tests live in tests/test_train*.)
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mmseq
from conftest import TINY_DECODER, TINY_ENCODER, make_model, sentences, write_speech_corpus
from mmseq import checkpoint as model_module  # where the folder writing lives
from mmseq.errors import CheckpointError
from mmseq.tokenizer import CharTokenizer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.train(sentences(100))


def weights_of(folder: Path) -> torch.Tensor:
    return mmseq.load(folder).decoder.embed.weight.detach().clone()


def run_child(work, timeout: float = 60.0) -> int:
    """Run ``work()`` in a forked child; returns its raw wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            work()
            os._exit(0)
        except BaseException:
            os._exit(3)
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def killed_by_sigkill(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def die():
    os.kill(os.getpid(), signal.SIGKILL)


# -- SIGKILL at a random moment ---------------------------------------------------------------------
def test_sigkill_at_random_moments_always_leaves_loadable_checkpoints(tokenizer, tmp_path):
    """A child saves in a loop, over one folder and into new ones; it is killed at random times.
    After every kill, every checkpoint folder loads, and the overwritten one holds a whole model."""
    first, second = make_model(tokenizer, seed=0), make_model(tokenizer, seed=1)
    mmseq.save(first, tmp_path / "same")
    mmseq.save(first, tmp_path / "step-0")
    expected = {weights_of(tmp_path / "same").sum().item()}
    expected.add(second.decoder.embed.weight.sum().item())
    rng = random.Random(0)
    checked = set()
    for trial in range(12):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.write(write, b"go")
            for i in range(1, 1000):
                mmseq.save(second if i % 2 else first, tmp_path / "same")
                mmseq.save(second, tmp_path / f"step-{trial}-{i}")
            os._exit(0)
        os.close(write)
        os.read(read, 2)  # the child is saving from here on
        os.close(read)
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(pid, signal.SIGKILL)
        assert killed_by_sigkill(os.waitpid(pid, 0)[1])
        visible = {p for p in tmp_path.iterdir() if not p.name.startswith(".")}
        for folder in visible - checked:
            mmseq.load(folder)  # raises if any is partial
        checked |= visible - {tmp_path / "same"}
        assert weights_of(tmp_path / "same").sum().item() in expected
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert all(".tmp-" in name or ".old-" in name for name in leftovers)  # hidden, ignored by loaders


# -- SIGKILL at each step of a save ---------------------------------------------------------------
def _kill_in(target: str, after: bool = True):
    """A patch that SIGKILLs the process inside ``target`` (a dotted attribute path), before or
    after the real call."""
    owner_name, attribute = target.rsplit(".", 1)
    owner = {"model": model_module, "os": os, "shutil": model_module.shutil,
             "safetensors.torch": __import__("safetensors.torch").torch}[owner_name]
    real = getattr(owner, attribute)

    def patched(*args, **kwargs):
        if after:
            real(*args, **kwargs)
        die()

    return owner, attribute, patched


def _write_half_then_die(tensors, filename, *args, **kwargs):
    from safetensors.torch import save as to_bytes

    data = to_bytes(tensors)
    with open(filename, "wb") as file:
        file.write(data[: len(data) // 2])
    die()


KILL_POINTS = {
    "in-weights-write": lambda m: m.setattr(__import__("safetensors.torch").torch, "save_file", _write_half_then_die),
    "after-weights": lambda m: m.setattr(*_kill_in("safetensors.torch.save_file")),
    "in-extra-files": None,  # write_extra (the trainer's state) dies
    "in-fsync": lambda m: m.setattr(*_kill_in("model._fsync_folder", after=False)),
    "at-the-swap": lambda m: m.setattr(*_kill_in("model._exchange", after=False)),
    "after-the-swap": lambda m: m.setattr(*_kill_in("shutil.rmtree", after=False)),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
@pytest.mark.parametrize("into", ["same-folder", "new-folder"])
def test_sigkill_at_each_step_of_a_save_keeps_the_previous_checkpoint(point, into, tokenizer, tmp_path, monkeypatch):
    old, new = make_model(tokenizer, seed=0), make_model(tokenizer, seed=1)
    mmseq.save(old, tmp_path / "previous")
    target = tmp_path / ("previous" if into == "same-folder" else "next")
    before = weights_of(tmp_path / "previous")

    def work():
        extra = None
        if KILL_POINTS[point] is None:
            def extra(folder):
                (folder / "trainer_state.json").write_text("{\"step\":")
                die()
        else:
            KILL_POINTS[point](monkeypatch)
        mmseq.save(new, target, extra)

    status = run_child(work)
    # A save into a new folder never swaps nor removes anything: those points are not reached.
    reached = into == "same-folder" or point not in ("at-the-swap", "after-the-swap")
    assert killed_by_sigkill(status) if reached else os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    visible = {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")}
    swapped = point == "after-the-swap" and into == "same-folder"
    assert torch.equal(weights_of(tmp_path / "previous"), new.decoder.embed.weight if swapped else before)
    if into == "new-folder":
        assert visible == ({"previous"} if reached else {"previous", "next"})
        if not reached:
            assert torch.equal(weights_of(tmp_path / "next"), new.decoder.embed.weight)


def test_without_an_atomic_swap_the_save_still_replaces_the_folder(tokenizer, tmp_path, monkeypatch):
    """File systems without renameat2's exchange: two renames, the old folder removed."""
    monkeypatch.setattr(model_module, "_exchange", lambda new, old: False)
    mmseq.save(make_model(tokenizer, seed=0), tmp_path / "c")
    new = make_model(tokenizer, seed=1)
    mmseq.save(new, tmp_path / "c")
    assert torch.equal(weights_of(tmp_path / "c"), new.decoder.embed.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_temporary_folder(tokenizer, tmp_path, monkeypatch):
    old = make_model(tokenizer, seed=0)
    mmseq.save(old, tmp_path / "c")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(__import__("safetensors.torch").torch, "save_file", full)
    with pytest.raises(OSError, match="No space left"):
        mmseq.save(make_model(tokenizer, seed=1), tmp_path / "c")
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
    assert torch.equal(weights_of(tmp_path / "c"), old.decoder.embed.weight)


# -- corrupt files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0, 7, 100, "half", "all-but-one"])
def test_truncated_weights_are_reported_as_corrupt(keep, tokenizer, tmp_path):
    folder = mmseq.save(make_model(tokenizer), tmp_path / "c")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    keep = {"half": len(data) // 2, "all-but-one": len(data) - 1}.get(keep, keep)
    weights.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match=f"{weights}: corrupt"):
        mmseq.load(folder)


def test_flipped_bytes_in_the_header_are_reported_as_corrupt(tokenizer, tmp_path):
    folder = mmseq.save(make_model(tokenizer), tmp_path / "c")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[10:20] = b"\xff" * 10
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        mmseq.load(folder)


# -- the trainer: fall back past a corrupt checkpoint; one run per folder ----------------------------
def _settings(manifest: Path, out: Path, *extra) -> list[str]:
    return [f"data.train={manifest}", f"output_dir={out}", "data.batch_size=4", "data.num_workers=0",
            "trainer.device=cpu", "trainer.keep_last=3", "trainer.keep_best=0", "trainer.warmup_steps=1",
            "model.encoder=" + json.dumps(TINY_ENCODER), "model.decoder=" + json.dumps(TINY_DECODER), *extra]


def _train(manifest, out, *extra):
    from mmseq.config import load_config
    from mmseq.training.trainer import train

    return train(load_config(None, _settings(manifest, out, *extra)))


@pytest.fixture
def two_checkpoints(tmp_path):
    """An output folder holding the checkpoints of epochs 1 and 2 of a tiny run."""
    from mmseq.training.state import list_checkpoints

    manifest = write_speech_corpus(tmp_path / "data", 8)
    _train(manifest, tmp_path / "out", "trainer.max_epochs=2")
    checkpoints = list_checkpoints(tmp_path / "out")
    assert len(checkpoints) == 2
    return manifest, tmp_path / "out", checkpoints


def _resume_log(capfd, manifest, out) -> str:
    capfd.readouterr()
    _train(manifest, out, "trainer.max_epochs=3")
    return capfd.readouterr().err


def test_resume_falls_back_past_truncated_weights(two_checkpoints, capfd):
    manifest, out, (older, newer) = two_checkpoints
    weights = newer / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    err = _resume_log(capfd, manifest, out)
    assert f"cannot resume from {newer}" in err and "corrupt" in err
    assert f"resumed from {older}" in err


class Unsafe:
    """Not among the types ``torch.load(weights_only=True)`` accepts."""


DAMAGE = {
    "state-tensors-truncated": ("trainer_state.pt", lambda path: path.write_bytes(path.read_bytes()[:20])),
    "state-tensors-empty": ("trainer_state.pt", lambda path: path.write_bytes(b"")),
    "state-tensors-missing": ("trainer_state.pt", lambda path: path.unlink()),
    "state-tensors-unsafe-pickle": ("trainer_state.pt", lambda path: torch.save({"optimizer": Unsafe()}, path)),
    "state-tensors-wrong-keys": ("trainer_state.pt", lambda path: torch.save({"optimizer": {}}, path)),
    "state-json-truncated": ("trainer_state.json", lambda path: path.write_bytes(path.read_bytes()[:20])),
    "state-json-a-list": ("trainer_state.json", lambda path: path.write_text("[]")),
    "config-truncated": ("config.json", lambda path: path.write_bytes(path.read_bytes()[:20])),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_falls_back_past_other_corrupt_files(damage, two_checkpoints, capfd):
    manifest, out, (older, newer) = two_checkpoints
    name, spoil = DAMAGE[damage]
    spoil(newer / name)
    err = _resume_log(capfd, manifest, out)
    reason = re.search(rf"cannot resume from {re.escape(str(newer))} \((.*)\); trying the one before", err)
    assert reason and name in reason.group(1) and "corrupt" in reason.group(1), err[-2000:]
    assert f"resumed from {older}" in err
    assert json.loads((out / "last" / "trainer_state.json").read_text())["epoch"] == 3  # and trained on


def test_no_loadable_checkpoint_stops_instead_of_starting_afresh(two_checkpoints):
    """Every checkpoint corrupt: a clear error naming the folder and the newest's fault; nothing
    new is written over the old run (and the folder's lock is released)."""
    from mmseq.errors import TrainingError

    manifest, out, checkpoints = two_checkpoints
    for folder in checkpoints:
        (folder / "trainer_state.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(TrainingError, match=rf"{re.escape(str(out))}: no checkpoint can be resumed from "
                                            rf"\(2 tried; the newest: .*trainer_state.pt: corrupt"):
        _train(manifest, out, "trainer.max_epochs=3")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [p.name for p in checkpoints]
    with pytest.raises(TrainingError, match="no checkpoint can be resumed"):  # not "another run"
        _train(manifest, out, "trainer.max_epochs=3")


def test_leftover_temporary_folders_are_ignored_on_resume(two_checkpoints, capfd):
    from mmseq.training.state import list_checkpoints

    manifest, out, (older, newer) = two_checkpoints
    (newer.parent / f".step-99999999.tmp-deadbeef").mkdir()
    (newer.parent / f".{newer.name}.old-deadbeef").mkdir()
    assert list_checkpoints(out) == [older, newer]
    assert f"resumed from {newer}" in _resume_log(capfd, manifest, out)


LOCK_HOLDER = """
import sys, time
from mmseq.config import load_config
from mmseq.training.trainer import Trainer
trainer = Trainer(load_config(None, sys.argv[1:]))
trainer.setup()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_on_the_same_folder_is_refused_and_changes_nothing(tmp_path):
    from mmseq.errors import TrainingError

    manifest = write_speech_corpus(tmp_path / "data", 8)
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, *_settings(manifest, out, "trainer.max_epochs=5")],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert first.stdout.readline().strip() == "locked"
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        with pytest.raises(TrainingError, match="another training run is using this output folder"):
            _train(manifest, out, "trainer.max_epochs=1", "trainer.lr=0.5")
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
        assert not (out / "checkpoints").exists()
    finally:
        first.kill()  # SIGKILL: the kernel drops its lock with it
        first.wait()
    _train(manifest, out, "trainer.max_epochs=1")  # a killed run's lock does not block the next one
    assert (out / "last").exists()
