"""Resume keeps saving when rotation deletes the checkpoint it resumed from (``keep_best: 1``,
``keep_last: 1``, a sentencepiece tokenizer whose file sits in every checkpoint): extended from one
epoch to four, or killed (SIGINT, SIGKILL) at random moments and rerun until done, the run writes
every checkpoint and ends with the weights of a run never stopped."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from conftest import write_speech_corpus, write_train_config
from mmseq.config import load_config
from mmseq.training.state import list_checkpoints
from mmseq.training.trainer import train

SETTINGS = ["tokenizer.type=sentencepiece", "tokenizer.vocab_size=40", "trainer.keep_best=1", "trainer.keep_last=1"]


def final_weights(out):
    return load_file(str(out / "last" / "model.safetensors"))


def assert_same(expected, got):
    assert expected.keys() == got.keys()
    assert [name for name in expected if not torch.equal(expected[name], got[name])] == []


def straight_run(tmp_path, manifest, epochs=4):
    config = write_train_config(tmp_path / "straight", manifest, max_epochs=epochs)
    train(load_config(config, SETTINGS))
    return final_weights(tmp_path / "straight" / "out")


def test_one_epoch_then_four_writes_every_checkpoint(tmp_path, capfd):
    manifest = write_speech_corpus(tmp_path / "corpus", count=8)
    config = write_train_config(tmp_path / "run", manifest, max_epochs=1)
    out = tmp_path / "run" / "out"
    train(load_config(config, SETTINGS))
    first = list_checkpoints(out)
    capfd.readouterr()
    train(load_config(config, SETTINGS + ["trainer.max_epochs=4"]))
    err = capfd.readouterr().err
    assert "resumed from" in err and "could not write" not in err
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 4
    assert first[0] not in list_checkpoints(out)  # rotation deleted the checkpoint the run came from
    assert_same(straight_run(tmp_path, manifest), final_weights(out))


def test_killed_at_random_moments_and_rerun_ends_as_a_run_never_stopped(tmp_path):
    manifest = write_speech_corpus(tmp_path / "corpus", count=8)
    config = write_train_config(tmp_path / "run", manifest, max_epochs=4, checkpoint_every=2)
    out = tmp_path / "run" / "out"
    command = [sys.executable, "-m", "mmseq", "train", str(config), *SETTINGS, "trainer.checkpoint_every=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    kills = [signal.SIGINT, signal.SIGKILL, signal.SIGKILL, signal.SIGINT]
    for number in kills:
        log = out / "log.csv"
        logged = log.stat().st_size if log.exists() else 0
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Wait for this try's first logged step (a signal during imports is not what is tested).
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None and (log.stat().st_size if log.exists() else 0) <= logged:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(number)
        _, err = process.communicate(timeout=120)
        assert b"Traceback" not in err and b"could not write" not in err, err.decode()[-2000:]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "could not write" not in done.stderr
    assert json.loads((out / "last" / "trainer_state.json").read_text())["epoch"] == 4
    assert_same(straight_run(tmp_path, manifest), final_weights(out))


def test_a_signal_at_an_epochs_last_step_still_closes_that_epoch_on_resume(tmp_path):
    """Stopped (SIGINT) right after the last step of the last epoch, before its validation: the
    rerun validates, counts the epoch and writes its checkpoint, as the run never stopped did."""
    import signal as signals

    from mmseq.training.trainer import Trainer

    manifest = write_speech_corpus(tmp_path / "corpus", count=8)
    config = load_config(write_train_config(tmp_path / "run", manifest, max_epochs=2), SETTINGS)
    trainer = Trainer(config)
    real = Trainer.forward_backward

    def signal_in_the_last_step(self, *args):
        if self.state["step"] == self.total_steps - 1:
            self._handle_signal(signals.SIGINT, None)  # as if Ctrl-C came during the last step
        return real(self, *args)

    Trainer.forward_backward = signal_in_the_last_step
    try:
        try:
            trainer.train()
        except SystemExit as stop:
            assert stop.code == 128 + signals.SIGINT
    finally:
        Trainer.forward_backward = real
    out = tmp_path / "run" / "out"
    stopped = json.loads((out / "last" / "trainer_state.json").read_text())
    assert stopped["epoch"] == 1 and stopped["batch_in_epoch"] > 0  # the epoch's end not yet counted
    train(config)
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 2 and state["batch_in_epoch"] == 0 and state["best"]
    assert_same(straight_run(tmp_path, manifest, epochs=2), final_weights(out))
