"""Safe loading: a checkpoint folder is read as JSON and safetensors only, so no file in it can run
code. Pickles carrying a payload are refused (or ignored) and never executed; configs that name
unknown parts or settings are refused with a clear error naming the file; training state is read
with ``torch.load(weights_only=True)``.

Every payload here, if it ever ran, would create a marker file: each test asserts it does not exist.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

import mmseq
from conftest import TINY_DECODER, TINY_ENCODER, make_model, sentences, write_speech_corpus
from mmseq.errors import CheckpointError, ConfigError, MmseqError
from mmseq.model import ModelConfig, Seq2Seq
from mmseq.tokenizer import CharTokenizer, SentencePieceTokenizer

PACKAGE = Path(mmseq.__file__).parent


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def payload_bytes(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": Payload(marker)})


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.train(sentences(100))


@pytest.fixture
def checkpoint(tokenizer, tmp_path) -> Path:
    return mmseq.save(make_model(tokenizer), tmp_path / "checkpoint")


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PAYLOAD-RAN"
    yield path
    assert not path.exists(), "a pickled payload was executed"


def test_the_payload_really_runs_when_unpickled(marker):
    """The test of the tests: unpickling the payload does create the marker."""
    pickle.loads(payload_bytes(marker))
    assert marker.exists()
    marker.unlink()


# -- weights ------------------------------------------------------------------------------------
@pytest.mark.parametrize("save", [pickle.dumps, torch.save], ids=["pickle", "torch.save"])
def test_pickle_posing_as_safetensors_is_refused_unexecuted(save, checkpoint, marker):
    weights = checkpoint / "model.safetensors"
    if save is torch.save:
        torch.save({"state_dict": Payload(marker)}, weights)
    else:
        weights.write_bytes(payload_bytes(marker))
    with pytest.raises(CheckpointError, match=re.escape(str(weights))):
        mmseq.load(checkpoint)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pth", "model.ckpt", "model.pkl"])
def test_folder_with_only_pickled_weights_is_refused_unexecuted(name, checkpoint, marker):
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / name).write_bytes(payload_bytes(marker))
    with pytest.raises(CheckpointError, match=f"{name}, which mmseq never unpickles"):
        mmseq.load(checkpoint)


def test_pickles_beside_safe_weights_are_ignored(checkpoint, marker):
    for name in ("pytorch_model.bin", "optimizer.pt", "trainer_state.pt", "extra.pkl"):
        (checkpoint / name).write_bytes(payload_bytes(marker))
    assert isinstance(mmseq.load(checkpoint), Seq2Seq)


def test_weights_of_another_model_are_refused(checkpoint, tokenizer, tmp_path):
    other = mmseq.save(make_model(tokenizer, encoder={**TINY_ENCODER, "dim": 48}), tmp_path / "other")
    shutil.copy(other / "model.safetensors", checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError, match="incompatible weights"):
        mmseq.load(checkpoint)


# -- config ---------------------------------------------------------------------------------------
def _edit(checkpoint: Path, change) -> Path:
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    return path


def _route(config: dict) -> dict:
    return config["model"]["tasks"]["asr"]


CONFIG_CHANGES = {
    "unknown-encoder": (lambda c: _route(c)["encoder"].update(name="evil_encoder"), "unknown encoder 'evil_encoder'"),
    "unknown-task": (lambda c: _route(c).update(task="evil_task"), "unknown task 'evil_task'"),
    "unknown-tokenizer": (lambda c: c["tokenizer"].update(type="evil"), "unknown tokenizer 'evil'"),
    "unknown-encoder-setting": (lambda c: _route(c)["encoder"].update(evil=1), "evil"),
    "unknown-route-setting": (lambda c: _route(c).update(evil=1), "unknown setting 'evil'"),
    "unknown-model-setting": (lambda c: c["model"].update(evil=1), "evil"),
    "unknown-decoder-setting": (lambda c: c["model"]["decoder"].update(evil=1), "evil"),
    "unknown-decoding-setting": (lambda c: c.update(decoding={"evil": 1}), "evil"),
    "no-model": (lambda c: c.pop("model"), "lacks 'model'"),
    "no-encoder-name": (lambda c: _route(c)["encoder"].pop("name"), "needs a 'name'"),
    "tokenizer-without-type": (lambda c: c["tokenizer"].pop("type"), "type"),
    "model-is-a-string": (lambda c: c.update(model="conformer"), "describes no model"),
    "route-is-a-string": (lambda c: c["model"]["tasks"].update(asr="conformer"), "expected a mapping"),
    "encoder-names-no-route": (lambda c: _route(c).update(encoder="conformer"), "names no route"),
    "width-is-a-string": (lambda c: _route(c)["encoder"].update(dim="wide"), "describes no model"),
    "ctc-weight-is-a-string": (lambda c: _route(c).update(ctc_weight="high"), "describes no model"),
    "vocabulary-is-a-number": (lambda c: c["tokenizer"].update(vocab=5), "describes no model"),
}


@pytest.mark.parametrize("name", list(CONFIG_CHANGES))
def test_config_naming_unknown_parts_or_settings_is_refused(name, checkpoint):
    change, words = CONFIG_CHANGES[name]
    path = _edit(checkpoint, change)
    with pytest.raises(ConfigError) as caught:
        mmseq.load(checkpoint)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage", b"[1, 2, 3]", b'"model"', b"null",
                                     b"{" * 100_000, pickle.dumps({"task": "asr"})],
                         ids=["empty", "binary", "list", "string", "null", "nested-too-deep", "pickle"])
def test_corrupt_config_is_a_checkpoint_error(content, checkpoint, marker):
    (checkpoint / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(checkpoint / "config.json"))):
        mmseq.load(checkpoint)


@pytest.mark.parametrize("model_file", ["/etc/passwd", "../tokenizer.model", "/dev/zero", "sub/tokenizer.model", ""])
def test_tokenizer_file_outside_the_checkpoint_is_refused(model_file, checkpoint):
    _edit(checkpoint, lambda c: c.update(tokenizer={"type": "sentencepiece", "model_file": model_file}))
    with pytest.raises(CheckpointError, match="file name inside the checkpoint folder"):
        mmseq.load(checkpoint)


def test_corrupt_sentencepiece_model_is_a_checkpoint_error(tmp_path):
    tokenizer = SentencePieceTokenizer.train(sentences(200), vocab_size=40, out=tmp_path / "sp.model")
    folder = mmseq.save(make_model(tokenizer), tmp_path / "checkpoint")
    (folder / "tokenizer.model").write_bytes(b"\x00 not a model")
    with pytest.raises(CheckpointError, match="unusable tokenizer"):
        mmseq.load(folder)


def test_checkpoint_never_reads_the_backbone_weights_it_was_built_from(tokenizer, tmp_path, marker):
    """A caption checkpoint names a pretrained backbone file: loading ignores it (the checkpoint's
    own weights replace it), so a payload put there is never read."""
    encoder = dict(name="timm", model_name="test_convnext", dim=32, image_size=64)
    model = Seq2Seq(ModelConfig(encoder=encoder, decoder=dict(TINY_DECODER), ctc_weight=0.0), tokenizer, "caption")
    folder = mmseq.save(model, tmp_path / "captioner")
    evil = tmp_path / "backbone.pth"
    evil.write_bytes(payload_bytes(marker))
    _edit(folder, lambda c: c["model"]["tasks"]["caption"]["encoder"].update(pretrained=True, pretrained_file=str(evil)))
    assert mmseq.load(folder).route().kind == "caption"


@pytest.mark.parametrize("encoder", ["timm", "torchvision"])
def test_pickled_backbone_file_in_a_training_config_is_refused_unexecuted(encoder, tmp_path, marker):
    evil = tmp_path / "backbone.pth"
    torch.save({"state_dict": Payload(marker)}, evil)
    from mmseq.encoders import create_encoder

    with pytest.raises(CheckpointError, match=re.escape(str(evil))):
        create_encoder(encoder, model_name="resnet18" if encoder == "torchvision" else "test_convnext",
                       dim=32, image_size=64, pretrained_file=str(evil))


# -- training state ---------------------------------------------------------------------------------
def test_training_state_is_read_with_weights_only(tmp_path, marker, capfd):
    """A trainer_state.pt with a payload: resume must not run it; it refuses the state (or falls
    back), with an error that names the file."""
    from mmseq.config import load_config
    from mmseq.training.state import list_checkpoints
    from mmseq.training.trainer import train

    manifest = write_speech_corpus(tmp_path / "data", 8)
    settings = [f"data.train={manifest}", f"output_dir={tmp_path / 'out'}", "trainer.max_epochs=1",
                "data.batch_size=4", "data.num_workers=0", "trainer.device=cpu",
                "model.encoder=" + json.dumps(TINY_ENCODER), "model.decoder=" + json.dumps(TINY_DECODER)]
    train(load_config(None, settings))
    [folder] = list_checkpoints(tmp_path / "out")
    torch.save({"optimizer": Payload(marker), "scheduler": {}, "scaler": {}, "rng": []}, folder / "trainer_state.pt")
    with pytest.raises(Exception) as caught:
        train(load_config(None, settings[:2] + ["trainer.max_epochs=2"] + settings[3:]))
    assert isinstance(caught.value, (MmseqError, pickle.UnpicklingError))
    assert "weights_only" in str(caught.value) or "trainer_state.pt" in str(caught.value)


def test_the_package_never_unpickles():
    """Static guard: every torch.load in mmseq passes weights_only=True; nothing calls pickle,
    yaml.load, eval or exec."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", source):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path.name}: {match.group(0)}")
        for pattern in (r"\bpickle\.loads?\(", r"\byaml\.load\(", r"(?<![.\w])eval\(", r"(?<![.\w])exec\(",
                        r"\bdill\b", r"\bjoblib\b"):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, source)]
    assert not offenders, offenders


def test_the_command_line_refuses_an_unsafe_checkpoint_in_one_line(checkpoint, marker, capsys):
    from mmseq import cli

    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "pytorch_model.bin").write_bytes(payload_bytes(marker))
    assert cli.main(["transcribe", str(checkpoint), "any.wav", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmseq: error: ") and "never unpickles" in err and "\n" not in err
