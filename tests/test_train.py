"""The trainer: accumulation equals a large batch, non-finite steps, checkpoints that survive a full
disk, SIGTERM and SIGKILL (bit-exact resume), the weight average, activation checkpointing."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_DECODER, TINY_ENCODER, write_speech_corpus
from mmseq.config import load_config
from mmseq.errors import ConfigError
from mmseq.checkpoint import load
from mmseq.errors import TrainingError
from mmseq.training.distributed import checkpoint_activations, layer_modules
from mmseq.training.optim import WeightAverage
from mmseq.training.state import STATE_JSON, TRAINING_WEIGHTS, list_checkpoints
from mmseq.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
SPECAUGMENT = {"freq_masks": 1, "freq_width": 4, "time_masks": 1, "time_width": 0.05}


def training_config(folder: Path, count: int = 20, randomness: bool = True, valid: bool = False, **trainer) -> Path:
    """A tiny ASR run on ``count`` synthetic utterances; returns the config path. With
    ``randomness`` the model has dropout and SpecAugment, so an exact resume needs the RNG state."""
    folder = Path(folder)
    train = write_speech_corpus(folder / "corpus", count=count)
    data = {"train": str(train), "batch_size": 100.0, "max_batch_examples": 3, "num_workers": 0}
    if valid:
        data["valid"] = str(write_speech_corpus(folder / "corpus", count=4, seed=9, name="valid.jsonl"))
    encoder = dict(TINY_ENCODER, dropout=0.1, specaugment=SPECAUGMENT) if randomness else dict(TINY_ENCODER)
    decoder = dict(TINY_DECODER, dropout=0.1 if randomness else 0.0)
    settings = {"max_epochs": 2, "lr": 0.003, "warmup_steps": 3, "log_every": 1, "val_metric": "loss", **trainer}
    config = {"task": "asr", "output_dir": str(folder / "exp"), "data": data,
              "model": {"encoder": encoder, "decoder": decoder, "ctc_weight": 0.3}, "trainer": settings}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def set_up(path: Path, *overrides: str) -> Trainer:
    trainer = Trainer(load_config(path, list(overrides)))
    trainer.setup()
    return trainer


def items(trainer: Trainer, indices: list[int]) -> list[dict]:
    return [trainer.loader.dataset[i] for i in indices]


# -- one optimizer step ---------------------------------------------------------------------------
def one_step(folder: Path, micro_batches: list[list[int]]) -> tuple[dict, dict]:
    """Gradients handed to the optimizer, and the weights after, for one step over micro-batches."""
    trainer = set_up(training_config(folder, count=8, randomness=False))
    step, seen = trainer.optimizer.step, {}

    def recording_step(*args, **kwargs):
        seen.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    for number, indices in enumerate(micro_batches, 1):
        trainer.forward_backward(trainer.task.collate(items(trainer, indices)), sync=number == len(micro_batches))
    assert trainer.optimizer_step(examples=sum(map(len, micro_batches)))
    return seen, {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_accumulation_gives_the_update_of_one_large_batch(tmp_path):
    accumulated_grads, accumulated = one_step(tmp_path / "two", [[0, 1, 2], [5, 6]])
    large_grads, large = one_step(tmp_path / "one", [[0, 1, 2, 5, 6]])
    for name, grad in large_grads.items():  # the mean over the step's examples, however split
        torch.testing.assert_close(accumulated_grads[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max(), msg=name)
        # AdamW's first step is lr * g / (|g| + 1e-8): where |g| is rounding noise (attention key
        # biases: softmax ignores a constant shift) its sign decides; everywhere else the weights agree.
        meaningful = grad.abs() > 1e-7
        torch.testing.assert_close(accumulated[name][meaningful], large[name][meaningful], atol=1e-6, rtol=1e-5,
                                   msg=name)
    assert not torch.equal(large["decoder.embed.weight"], one_step(tmp_path / "no", [[0]])[1]["decoder.embed.weight"])


def test_non_finite_steps_are_skipped_counted_and_stop_training(tmp_path):
    trainer = set_up(training_config(tmp_path, count=6, randomness=False), "trainer.nonfinite_limit=3")
    batch = trainer.task.collate(items(trainer, [0, 1]))
    poisoned = dict(batch, inputs=torch.full_like(batch["inputs"], float("nan")))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for attempt in (1, 2):
        trainer.forward_backward(poisoned)
        assert not trainer.optimizer_step(examples=2)
        assert trainer.state["nonfinite_in_row"] == attempt and trainer.state["step"] == 0
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    trainer.forward_backward(batch)  # a good step resets the run of bad ones
    assert trainer.optimizer_step(examples=2)
    assert trainer.state["nonfinite_in_row"] == 0 and trainer.state["skipped_steps"] == 2
    for _ in range(2):
        trainer.forward_backward(poisoned)
        trainer.optimizer_step(examples=2)
    trainer.forward_backward(poisoned)
    with pytest.raises(TrainingError, match="3 steps in a row had non-finite"):
        trainer.optimizer_step(examples=2)


# -- checkpoints ----------------------------------------------------------------------------------
def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    trainer = set_up(training_config(tmp_path, count=6, randomness=False))
    trainer.forward_backward(trainer.task.collate(items(trainer, [0, 1])))
    trainer.optimizer_step(examples=2)
    assert trainer.save()
    previous = list_checkpoints(trainer.out)
    saved = weights(previous[-1])

    trainer.forward_backward(trainer.task.collate(items(trainer, [2, 3])))
    trainer.optimizer_step(examples=2)

    def disk_full(*args, **kwargs):  # the weights are already written in the temporary folder
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    assert not trainer.save()
    assert list_checkpoints(trainer.out) == previous
    assert not [p for p in (trainer.out / "checkpoints").iterdir() if p.name.startswith(".")]  # no leftovers
    reloaded = load(trainer.out / "last")
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, saved[name])
    monkeypatch.undo()
    assert trainer.save() and len(list_checkpoints(trainer.out)) == 1  # the next try works and prunes


def test_the_final_checkpoint_failing_is_an_error(tmp_path, monkeypatch):
    trainer = Trainer(load_config(training_config(tmp_path, count=6, randomness=False),
                                  ["trainer.max_epochs=1"]))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(TrainingError, match="could not write the last checkpoint"):
        trainer.train()


def test_sigterm_saves_a_checkpoint_at_the_step_then_exits(tmp_path, monkeypatch):
    config = load_config(training_config(tmp_path, count=12), ["trainer.accumulate=2"])
    trainer = Trainer(config)
    step = Trainer.optimizer_step

    def signal_then_step(self, *args, **kwargs):  # the signal comes while the first step is under way
        if self.state["step"] == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "optimizer_step", signal_then_step)
    with pytest.raises(SystemExit) as stopped:
        trainer.train()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    import json
    (last,) = list_checkpoints(trainer.out)
    state = json.loads((last / STATE_JSON).read_text())
    assert (state["step"], state["batch_in_epoch"], state["epoch"]) == (1, 2, 0)


def run_in_subprocess(config: Path, *overrides: str, log: Path) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with open(log, "w") as output:
        return subprocess.Popen([sys.executable, "-m", "mmseq", "train", str(config), *overrides], cwd=ROOT,
                                env=environment, stdout=output, stderr=subprocess.STDOUT)


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights_bit_for_bit(tmp_path):
    torch.set_num_threads(1)  # as the subprocess: the same reductions in the same order
    path = training_config(tmp_path, count=20, valid=True)
    settings = ["trainer.accumulate=2", "trainer.checkpoint_every=1", "trainer.max_epochs=3"]

    # The interrupted run: killed (SIGKILL: no chance to save) soon after its second checkpoint.
    killed_dir = tmp_path / "killed"
    log = tmp_path / "killed.log"
    process = run_in_subprocess(path, *settings, f"output_dir={killed_dir}", log=log)
    deadline = time.time() + 120
    while not (killed_dir / "checkpoints" / "step-00000002").exists():
        assert process.poll() is None, log.read_text()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    import json
    resumed_from = list_checkpoints(killed_dir)[-1]
    state = json.loads((resumed_from / STATE_JSON).read_text())
    assert state["batch_in_epoch"] > 0 and state["epoch"] < 3  # killed in the middle of an epoch

    # Resume it to the end, and run the same training without interruption.
    Trainer(load_config(path, settings + [f"output_dir={killed_dir}"])).train()
    Trainer(load_config(path, settings + [f"output_dir={tmp_path / 'whole'}"])).train()
    resumed, whole = weights(killed_dir / "last"), weights(tmp_path / "whole" / "last")
    assert resumed.keys() == whole.keys()
    for name in whole:
        assert torch.equal(resumed[name], whole[name]), name
    assert (tmp_path / "whole" / "last").resolve().name == (killed_dir / "last").resolve().name


def test_a_finished_run_resumes_to_nothing_and_a_second_run_is_locked_out(tmp_path):
    path = training_config(tmp_path, count=6, randomness=False)
    config = load_config(path, ["trainer.max_epochs=1"])
    Trainer(config).train()
    last = Path(config.output_dir) / "last"
    before = weights(last)
    Trainer(config).train()
    assert all(torch.equal(before[k], v) for k, v in weights(last).items())
    assert len(list_checkpoints(config.output_dir)) == 1
    import fcntl
    with open(Path(config.output_dir) / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(TrainingError, match="another training run"):
            Trainer(config).train()


def test_keep_last_and_keep_best(tmp_path):
    path = training_config(tmp_path, count=9, randomness=False, valid=True)
    trainer = Trainer(load_config(path, ["trainer.max_epochs=4", "trainer.keep_last=2", "trainer.keep_best=1",
                                         "trainer.checkpoint_every=1"]))
    trainer.train()
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(trainer.out)]
    best = (trainer.out / "best").resolve().name
    assert steps[-2:] == [trainer.state["step"] - 1, trainer.state["step"]]
    assert set(steps) <= {int(best.split("-")[1]), *steps[-2:]} and len(steps) <= 3


# -- weight average and activation checkpointing ---------------------------------------------------
def test_weight_average_follows_its_formula():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model, step=100)  # decay min(0.9, 101/110) = 0.9
    torch.testing.assert_close(average.model.weight, start + 0.1)
    average.update(model, step=0)  # early steps: decay 1/10
    torch.testing.assert_close(average.model.weight, (start + 0.1) * 0.1 + (start + 1.0) * 0.9)
    with pytest.raises(ConfigError):
        WeightAverage(model, decay=1.5)


def test_ema_checkpoints_hold_the_average_and_resume_the_raw_weights(tmp_path):
    path = training_config(tmp_path, count=6, randomness=False)
    trainer = Trainer(load_config(path, ["trainer.max_epochs=1", "trainer.ema=0.9"]))
    trainer.train()
    last = trainer.out / "last"
    from safetensors.torch import load_file
    averaged, raw = weights(last), load_file(str(last / TRAINING_WEIGHTS))
    assert averaged.keys() == raw.keys()
    assert not torch.equal(averaged["decoder.embed.weight"], raw["decoder.embed.weight"])
    for name, value in trainer.ema.model.state_dict().items():
        assert torch.equal(averaged[name], value)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(raw[name], value)
    resumed = set_up(path, "trainer.max_epochs=2", "trainer.ema=0.9")
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, raw[name])
    for name, value in resumed.ema.model.state_dict().items():
        assert torch.equal(value, averaged[name])


def test_activation_checkpointing_keeps_the_gradients(tmp_path, char_tokenizer):
    from conftest import make_model, waveform_batch

    encoder = dict(TINY_ENCODER, dropout=0.2, specaugment=SPECAUGMENT)
    decoder = dict(TINY_DECODER, dropout=0.2)
    batch = waveform_batch([0.5, 0.4])
    first, second = char_tokenizer.encode("red cat"), char_tokenizer.encode("a dog")
    tokens = torch.zeros(2, len(first) + 3, dtype=torch.long)
    tokens[0, : len(first) + 3] = torch.tensor([1, 4, *first, 2])
    tokens[1, : len(second) + 3] = torch.tensor([1, 4, *second, 2])
    batch.update(tokens=tokens, prefix_lengths=torch.tensor([2, 2]))
    gradients = []
    for checkpointed in (False, True):
        model = make_model(char_tokenizer, encoder=encoder, decoder=decoder).train()
        if checkpointed:
            layers = layer_modules(model)
            assert len(layers) == TINY_ENCODER["layers"] + TINY_DECODER["layers"]
            checkpoint_activations(layers)
        torch.manual_seed(1)  # the same dropout masks: the recomputation must reproduce them
        model(batch)["loss_sum"].backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys()
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, msg=name)


def test_bad_settings_are_refused(tmp_path):
    path = training_config(tmp_path, count=4, randomness=False)
    for override, message in [("trainer.accumulate=0", "accumulate"), ("trainer.precision=fp64", "precision"),
                              ("trainer.ema=0.99", None)]:
        with pytest.raises(ConfigError, match=message or "ema is not supported with trainer.fsdp"):
            # Ranges are checked as the config is read (mmseq/checks.py), the rest at setup.
            Trainer(load_config(path, [override, "trainer.fsdp=true"] if message is None else [override])).setup()
