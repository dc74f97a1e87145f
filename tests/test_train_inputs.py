"""Training survives inputs that would cost it the run: an example larger than a whole batch's
budget (a 10-minute recording among sentences) is skipped with a line naming it, and a FIFO given
as audio is refused by a DataLoader worker without blocking it."""

import json
import os
import time

from conftest import write_speech_corpus, write_train_config
from mmseq.config import load_config
from mmseq.training.trainer import Trainer, train


def test_an_example_larger_than_the_batch_budget_is_skipped_and_named(tmp_path, capfd):
    manifest = write_speech_corpus(tmp_path / "corpus", count=6)
    lines = manifest.read_text().splitlines()
    long = json.loads(lines[0])
    long.update(id="long", duration=600.0)  # a 10-minute recording: its own batch, 300 times the budget
    manifest.write_text("\n".join(lines + [json.dumps(long)]) + "\n")
    trainer = Trainer(load_config(write_train_config(tmp_path / "run", manifest, max_epochs=1)))
    capfd.readouterr()
    try:
        trainer.setup()
    finally:
        trainer.lock.release()
    err = capfd.readouterr().err
    assert f"skipped: {manifest}:7: larger than one batch's budget (size 600, data.batch_size=2)" in err
    assert len(trainer.train_examples) == 6 and all(e["id"] != "long" for e in trainer.train_examples)


def test_a_fifo_as_audio_in_a_worker_is_skipped_without_blocking(tmp_path, capfd):
    manifest = write_speech_corpus(tmp_path / "corpus", count=6)
    fifo = tmp_path / "corpus" / "wav" / "pipe.wav"
    os.mkfifo(fifo)
    with open(manifest, "a") as file:  # the duration is given, so nothing opens the FIFO before the worker
        file.write(json.dumps({"id": "pipe", "audio": "wav/pipe.wav", "text": "red cat", "duration": 0.5}) + "\n")
    config = write_train_config(tmp_path / "run", manifest, max_epochs=1)
    started = time.monotonic()
    train(load_config(config, ["data.num_workers=1", "data.valid=null"]))
    assert time.monotonic() - started < 120
    err = capfd.readouterr().err
    assert f"skipped: {manifest}:7: " in err and "FIFO" in err
    assert (tmp_path / "run" / "out" / "last").exists()


def test_a_sentencepiece_vocabulary_smaller_than_the_characters_is_a_config_error(tmp_path):
    """Not sentencepiece's RuntimeError traceback: one line naming the setting and the size needed."""
    import re

    import pytest

    from mmseq.errors import ConfigError

    manifest = write_speech_corpus(tmp_path / "corpus", count=6)
    config = load_config(write_train_config(tmp_path / "run", manifest, max_epochs=1),
                         ["tokenizer.type=sentencepiece", "tokenizer.vocab_size=5"])
    with pytest.raises(ConfigError) as refused:
        train(config)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("tokenizer.vocab_size=5: ")
    needed = int(re.search(r"needs? at least (\d+)", message).group(1))
    assert needed > 5
    train(load_config(write_train_config(tmp_path / "run2", manifest, max_epochs=1),
                      ["tokenizer.type=sentencepiece", f"tokenizer.vocab_size={needed}"]))
