"""Seq2Seq: the joint CTC/attention loss, and checkpoint folders (save, load, refusals)."""

import json
import shutil

import pytest
import torch
from torch.nn import functional as F

import mmseq
from conftest import TINY_DECODER, TINY_ENCODER, make_model, waveform_batch
from mmseq.errors import CheckpointError, ConfigError
from mmseq.checkpoint import build_model


def training_batch(model, texts, seconds, prompt_extra=()):
    """A batch as the task's collate makes it, with optional extra prompt ids after the task token."""
    tokenizer = model.tokenizer
    batch = waveform_batch(seconds)
    prefix = [tokenizer.bos_id] + model.route().task.prompt() + list(prompt_extra)
    sequences = [prefix + tokenizer.encode(text) + [tokenizer.eos_id] for text in texts]
    tokens = torch.full((len(texts), max(map(len, sequences))), tokenizer.pad_id)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = torch.tensor(sequence)
    batch.update(tokens=tokens, prefix_lengths=torch.tensor([len(prefix)] * len(texts)))
    return batch


TEXTS = ["the red cat", "a dog runs now", "big bird"]
SECONDS = [0.6, 0.9, 0.4]


def test_loss_parts_combine_as_a_weighted_sum(char_tokenizer):
    model = make_model(char_tokenizer, ctc_weight=0.3)
    batch = training_batch(model, TEXTS, SECONDS)
    parts = {}
    for weight in (0.0, 0.3, 1.0):
        model.route().ctc_weight = weight  # the head stays: only the mix changes
        parts[weight] = model(batch)
    attention, ctc = parts[0.3]["attention_loss"], parts[0.3]["ctc_loss"]
    for weight, out in parts.items():
        torch.testing.assert_close(out["loss"], weight * ctc + (1 - weight) * attention)
        torch.testing.assert_close(out["loss_sum"] / out["examples"], out["loss"])
        assert out["examples"] == 3
    torch.testing.assert_close(parts[0.0]["loss"], attention)
    torch.testing.assert_close(parts[1.0]["loss"], ctc)
    assert float(ctc.detach()) > 0 and float(attention.detach()) > 0


def test_model_without_ctc_head(char_tokenizer):
    model = make_model(char_tokenizer, ctc_weight=0.0)
    assert model.ctc_head is None
    out = model(training_batch(model, TEXTS, SECONDS))
    assert "ctc_loss" not in out
    torch.testing.assert_close(out["loss"], out["attention_loss"])


def test_attention_loss_counts_text_and_end_only(char_tokenizer):
    model = make_model(char_tokenizer)
    batch = training_batch(model, TEXTS, SECONDS)
    out = model(batch)
    assert int(out["tokens"]) == sum(len(t) + 1 for t in TEXTS)  # text and </s>, no prompt, no padding
    # The same loss by hand: cross-entropy of the text tokens and </s> given everything before.
    memory, mask = model.encode(batch["inputs"], batch["lengths"])
    logits = model.decoder(batch["tokens"][:, :-1], memory, mask)
    total = 0.0
    for row, text in enumerate(TEXTS):
        start = int(batch["prefix_lengths"][row]) - 1  # the logits that predict the first text token
        targets = batch["tokens"][row, start + 1: start + 1 + len(text) + 1]
        total += F.cross_entropy(logits[row, start: start + len(targets)], targets, reduction="sum")
    torch.testing.assert_close(out["attention_loss"], total / 3, rtol=1e-5, atol=1e-5)


def test_prompt_predictions_do_not_count(char_tokenizer, monkeypatch):
    model = make_model(char_tokenizer)
    short = char_tokenizer.token_id("<|short|>")
    batch = training_batch(model, TEXTS, SECONDS, prompt_extra=[short])  # prompt: <|asr|> <|short|>
    out = model(batch)
    assert int(out["tokens"]) == sum(len(t) + 1 for t in TEXTS)
    forward = model.decoder.forward

    def scrambled(tokens, memory, mask, **kwargs):
        logits = forward(tokens, memory, mask, **kwargs).clone()
        logits[:, :2] += 50 * torch.randn_like(logits[:, :2])  # the positions that predict the prompt
        return logits

    monkeypatch.setattr(model.decoder, "forward", scrambled)
    changed = model(batch)
    torch.testing.assert_close(changed["attention_loss"], out["attention_loss"])
    logits_positions_hit = forward(batch["tokens"][:, :-1], *model.encode(batch["inputs"], batch["lengths"]))
    assert logits_positions_hit.shape[1] > 3  # the scrambled positions are not all of them


def test_ctc_loss_is_on_the_text_only(char_tokenizer):
    model = make_model(char_tokenizer)
    batch = training_batch(model, TEXTS, SECONDS)
    out = model(batch)
    memory, mask = model.encode(batch["inputs"], batch["lengths"])
    log_probs = model.ctc_log_probs(memory)
    expected = 0.0
    for row, text in enumerate(TEXTS):
        frames = int(mask[row].sum())
        target = torch.tensor(char_tokenizer.encode(text))
        expected += F.ctc_loss(log_probs[row, :frames], target, torch.tensor(frames), torch.tensor(len(target)),
                               blank=char_tokenizer.pad_id, reduction="sum")
    torch.testing.assert_close(out["ctc_loss"], expected / 3, rtol=1e-5, atol=1e-5)


def test_padding_in_the_batch_does_not_change_each_examples_loss(char_tokenizer):
    model = make_model(char_tokenizer)
    batch = training_batch(model, TEXTS, SECONDS)
    together = model(batch)["loss_sum"]
    alone = 0.0
    for row, text in enumerate(TEXTS):
        single = training_batch(model, [text], [SECONDS[row]])
        samples = int(batch["lengths"][row])
        single.update(inputs=batch["inputs"][row:row + 1, :samples], lengths=batch["lengths"][row:row + 1])
        alone += model(single)["loss_sum"]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


# -- checkpoints ----------------------------------------------------------------------------------
def test_save_load_round_trip(tiny_model, tmp_path):
    folder = mmseq.save(tiny_model, tmp_path / "checkpoint")
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["config.json", "model.safetensors"]  # a char tokenizer lives in config.json
    config = json.loads((folder / "config.json").read_text())
    assert list(config["model"]["tasks"]) == ["asr"] and config["model"]["tasks"]["asr"]["encoder"]["name"] == "conformer"
    assert config["tokenizer"]["type"] == "char"
    loaded = mmseq.load(folder)
    assert not loaded.training
    batch = training_batch(tiny_model, TEXTS, SECONDS)
    for key in ("loss", "attention_loss", "ctc_loss"):
        torch.testing.assert_close(loaded(batch)[key], tiny_model(batch)[key])
    for options in (dict(beam_size=1, ctc_weight=0.0), dict(beam_size=3, ctc_weight=0.3, nbest=2)):
        expected = tiny_model.generate(batch, max_length=10, **options)
        got = loaded.generate(batch, max_length=10, **options)
        assert [[h.tokens for h in hyps] for hyps in got] == [[h.tokens for h in hyps] for hyps in expected]
    # Saving again over an existing folder replaces it.
    mmseq.save(tiny_model, folder)
    assert sorted(p.name for p in folder.iterdir()) == files


def test_sentencepiece_checkpoint_carries_its_model(tmp_path, texts):
    from mmseq.tokenizer import SentencePieceTokenizer

    tokenizer = SentencePieceTokenizer.train(texts, vocab_size=40, out=tmp_path / "train" / "sp.model")
    model = make_model(tokenizer)
    folder = mmseq.save(model, tmp_path / "checkpoint")
    shutil.rmtree(tmp_path / "train")  # the checkpoint must not need the original file
    loaded = mmseq.load(folder)
    assert loaded.tokenizer.encode("the red cat") == tokenizer.encode("the red cat")


def test_decoding_settings_are_saved(char_tokenizer, tmp_path):
    from mmseq.model import ModelConfig, Seq2Seq

    model = Seq2Seq(ModelConfig(encoder=dict(TINY_ENCODER), decoder=dict(TINY_DECODER)), char_tokenizer, "asr",
                    {"beam_size": 3, "max_length_ratio": 0.5})
    loaded = mmseq.load(mmseq.save(model, tmp_path / "checkpoint"))
    assert loaded.decoding.beam_size == 3 and loaded.decoding.max_length_ratio == 0.5


def test_only_pickled_weights_are_refused(tiny_model, tmp_path):
    folder = mmseq.save(tiny_model, tmp_path / "checkpoint")
    (folder / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), folder / "model.pt")
    with pytest.raises(CheckpointError, match="model.pt"):
        mmseq.load(folder)
    only_pt = tmp_path / "only_pt"
    only_pt.mkdir()
    torch.save(tiny_model.state_dict(), only_pt / "model.pt")
    with pytest.raises(CheckpointError, match="only_pt"):
        mmseq.load(only_pt)


def test_missing_and_corrupt_checkpoints(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        mmseq.load(tmp_path / "nope")
    folder = mmseq.save(tiny_model, tmp_path / "checkpoint")
    (folder / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        mmseq.load(folder)
    folder = mmseq.save(tiny_model, tmp_path / "checkpoint2")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        mmseq.load(folder)


def test_weights_of_another_shape_are_refused(char_tokenizer, tmp_path):
    folder = mmseq.save(make_model(char_tokenizer), tmp_path / "checkpoint")
    config = json.loads((folder / "config.json").read_text())
    config["model"]["decoder"]["layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="incompatible"):
        mmseq.load(folder)


def test_unknown_encoder_task_or_missing_section_is_a_config_error(tiny_model, tmp_path):
    folder = mmseq.save(tiny_model, tmp_path / "checkpoint")
    original = json.loads((folder / "config.json").read_text())
    route = original["model"]["tasks"]["asr"]
    for change, message in [({"encoder": {"name": "wavlm-huge"}}, "wavlm-huge"), ({"task": "juggling"}, "juggling")]:
        change = {"model": {**original["model"], "tasks": {"asr": {**route, **change}}}}
        (folder / "config.json").write_text(json.dumps({**original, **change}))
        with pytest.raises(ConfigError, match=message):
            mmseq.load(folder)
    with pytest.raises(ConfigError, match="tokenizer"):
        build_model({k: v for k, v in original.items() if k != "tokenizer"})


def test_loading_never_unpickles(tiny_model, tmp_path, monkeypatch):
    import pickle

    folder = mmseq.save(tiny_model, tmp_path / "checkpoint")
    torch.save({"evil": 1}, folder / "model.pt")  # a pickle beside the weights is ignored

    def refuse(*args, **kwargs):
        raise AssertionError("mmseq.load unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = mmseq.load(folder)
    assert torch.equal(loaded.decoder.embed.weight, tiny_model.decoder.embed.weight)
