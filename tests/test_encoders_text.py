"""Text encoder: source tokenizers (characters, sentencepiece; given or learned from a manifest),
the checkpoint keeping them without the files they came from, shapes, masks and bad sources."""

import mmseq
import json

import pytest
import torch

from conftest import TINY_DECODER
from mmseq.encoders import create_encoder
from mmseq.encoders.text import TextEncoder, build_source_tokenizer
from mmseq.errors import ConfigError, InputError
from mmseq.tokenizer import train_tokenizer

SMALL = dict(dim=32, layers=1, heads=2, ffn_dim=64, dropout=0.0)
SOURCES = ["le chat noir", "un petit chien", "la maison bleue", "le grand arbre vert", "une souris grise"]


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [json.dumps({"id": f"s{i}", "source": s, "text": f"target {i}"}) for i, s in enumerate(SOURCES)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_characters_end_with_end_of_source_and_unknowns_become_unk():
    encoder = create_encoder("text", tokenizer={"type": "char", "vocab": "0123456789"}, **SMALL)
    assert encoder.modality == "text" and encoder.output_dim == 32
    # <pad> <s> </s> <unk> then the digits: "0" is 4.
    assert encoder.tokenize("1203").tolist() == [5, 6, 4, 7, 2]
    assert encoder.tokenize("1x").tolist() == [5, 3, 2]


@pytest.mark.parametrize("bad, message", [("", "empty"), ("   ", "empty"), (12, "must be a string"),
                                          ("9" * 20, "longer than")])
def test_bad_sources_are_input_errors(bad, message):
    encoder = create_encoder("text", tokenizer={"type": "char", "vocab": "0123456789"}, max_length=16, **SMALL)
    with pytest.raises(InputError, match=message):
        encoder.tokenize(bad)


def test_characters_learned_from_the_manifest_sources(manifest):
    encoder = create_encoder("text", tokenizer={"type": "char", "train_from": str(manifest)}, **SMALL)
    vocab = encoder.checkpoint_settings()["tokenizer"]["vocab"]
    assert set(vocab) == set("".join(SOURCES)) and "t" in vocab and "9" not in vocab  # sources, not targets
    assert encoder.checkpoint_settings()["tokenizer"] == {"type": "char", "vocab": vocab}
    assert encoder.checkpoint_settings()["dim"] == 32


@pytest.mark.parametrize("settings, message", [
    ({"type": "char"}, "needs 'vocab'"),
    ({"type": "sentencepiece"}, "needs 'model_file'"),
    ({"type": "sentencepiece", "model_file": "/no/such.model"}, "not found"),
    ({"type": "bpe-ish", "vocab": "ab"}, "must be 'char' or 'sentencepiece'"),
    ({"type": "char", "vocab": "ab", "vocabulary": "ab"}, "unknown setting 'vocabulary'"),
])
def test_bad_tokenizer_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        build_source_tokenizer(settings)


def test_empty_manifest_cannot_teach_a_tokenizer(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"id": "a", "audio": "x.wav", "text": "t"}) + "\n")
    with pytest.raises(ConfigError, match="no 'source' texts"):
        build_source_tokenizer({"type": "char", "train_from": str(empty)})


def test_padding_does_not_change_real_outputs_and_mask_marks_them():
    torch.manual_seed(0)
    encoder = create_encoder("text", tokenizer={"type": "char", "vocab": "abcdefghij"}, **SMALL).eval()
    sources = [encoder.tokenize(s) for s in ["abcdefg", "ab", "jihgfedcba"]]
    lengths = torch.tensor([len(s) for s in sources])
    tokens = torch.zeros(3, int(lengths.max()), dtype=torch.long)
    for row, source in enumerate(sources):
        tokens[row, : len(source)] = source
    with torch.no_grad():
        memory, mask = encoder(tokens, lengths)
        assert memory.shape == (3, 11, 32) and mask.sum(1).tolist() == [8, 3, 11]
        for row, source in enumerate(sources):
            alone, _ = encoder(source[None], None)
            torch.testing.assert_close(memory[row, : len(source)], alone[0], atol=1e-5, rtol=1e-5)


def _text_model(tokenizer_settings, char_tokenizer):
    from mmseq.model import ModelConfig, Seq2Seq

    torch.manual_seed(0)
    config = ModelConfig(encoder={"name": "text", "tokenizer": tokenizer_settings, **SMALL},
                         decoder=dict(TINY_DECODER), ctc_weight=0.0)
    return Seq2Seq(config, char_tokenizer, "text").eval()


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_checkpoint_keeps_the_source_tokenizer_without_its_files(kind, manifest, tmp_path, char_tokenizer):

    settings = {"type": kind, "train_from": str(manifest)}
    if kind == "sentencepiece":
        settings["vocab_size"] = 40
    model = _text_model(settings, char_tokenizer)
    mmseq.save(model, tmp_path / "checkpoint")
    manifest.unlink()  # the checkpoint must not need the file it learned from
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())["model"]["tasks"]["text"]["encoder"]
    assert "train_from" not in saved["tokenizer"] and saved["name"] == "text"
    if kind == "sentencepiece":
        assert saved["tokenizer"]["model_bytes"] > 0 and saved["tokenizer"]["vocab_size"] == model.encoder.vocab_size
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["config.json", "model.safetensors"]
    loaded = mmseq.load(tmp_path / "checkpoint")
    for source in ["le petit chat", "une maison"]:
        assert loaded.encoder.tokenize(source).tolist() == model.encoder.tokenize(source).tolist()
    sources = ["le chat", "la souris grise"]
    assert loaded.translate(sources, beam_size=1, max_length=8) == model.translate(sources, beam_size=1, max_length=8)


def test_sentencepiece_model_file_is_read_once(manifest, tmp_path):
    model_file = tmp_path / "source.model"
    train_tokenizer("sentencepiece", SOURCES * 5, prompt_tokens=[], out=model_file, vocab_size=30)
    encoder = TextEncoder(tokenizer={"type": "sentencepiece", "model_file": str(model_file)}, **SMALL)
    ids = encoder.tokenize("le chat").tolist()
    model_file.unlink()
    assert ids[-1] == 2 and all(3 <= i < encoder.vocab_size for i in ids[:-1])
    assert bytes(encoder.source_tokenizer_model.tolist())[:4] != b"\0\0\0\0"
    assert encoder.tokenize("le chat").tolist() == ids
