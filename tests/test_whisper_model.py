"""An imported Whisper is an ordinary mmseq model: its prompt slots (language and task replaced by
a user's prompt), its context as Whisper's previous-text segment, the encoder's ``tail`` (batch
invariant, shorter memories), the fused scorers over its byte-level BPE (n-gram LM, ContextBoost),
and the trainer: fine-tuning from it with a lower encoder learning rate, LoRA and prompt tuning.

The model is a tiny random Whisper written as an openai-whisper ``.pt`` (its real vocabulary of
51,865 tokens, from openai-whisper's tiktoken file) and imported by ``mmseq import whisper``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import mmseq
from mmseq.config import load_config
from mmseq.importers.whisper import import_whisper
from mmseq.training.trainer import train

pytest.importorskip("whisper")  # openai-whisper: its tiktoken file makes the tokenizer
from mmseq.importers.whisper_sources import expected_shapes, tiktoken_tokenizer_json  # noqa: E402

DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 4, "n_audio_layer": 2,
        "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 64, "n_text_head": 4, "n_text_layer": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The folder of a tiny random Whisper imported from an openai ``.pt``."""
    root = tmp_path_factory.mktemp("whisper")
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in expected_shapes(DIMS).items():
        tensor = torch.randn(shape, generator=generator) * 0.3
        if name.endswith("ln.weight") or name.endswith("ln_post.weight") or "_ln.weight" in name:
            tensor = torch.ones(shape)
        state[name] = tensor
    torch.save({"dims": DIMS, "model_state_dict": state}, root / "tiny.pt")
    (root / "tokenizer.json").write_bytes(tiktoken_tokenizer_json(DIMS["n_vocab"]))
    import_whisper(root / "tiny.pt", root / "model", tokenizer=root / "tokenizer.json", tail=2.0)
    return root / "model"


def batch_of(*seconds, seed=0):
    generator = torch.Generator().manual_seed(seed)
    waves = [torch.randn(int(s * 16000), generator=generator) * 0.1 for s in seconds]
    lengths = torch.tensor([len(w) for w in waves])
    inputs = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        inputs[i, : len(w)] = w
    return {"inputs": inputs, "lengths": lengths}


def test_the_route_prompt_and_prompt_slots(tiny):
    model = mmseq.load(tiny)
    tokenizer = model.tokenizer
    ids = tokenizer.encode_prompt
    assert model.route().task.prompt() == ids("<|en|> <|transcribe|> <|notimestamps|>")
    assert tokenizer.bos_id == tokenizer.token_id("<|startoftranscript|>")
    hyps = model.generate(batch_of(1.0), prompt="<|fr|> <|translate|>", max_length=3)
    assert hyps[0][0].prompt == ids("<|fr|> <|translate|> <|notimestamps|>")  # replaced in place, not appended
    hyps = model.generate(batch_of(1.0), prompt="<|de|> Guten", max_length=3)
    assert hyps[0][0].prompt == ids("<|de|> <|transcribe|> <|notimestamps|>") + tokenizer.encode("Guten")


def test_a_context_is_whispers_previous_text_segment(tiny):
    model = mmseq.load(tiny)
    seen = []
    step = model.decoder.step
    model.decoder.step = lambda tokens, cache, *a, **k: (seen.append(tokens.clone()), step(tokens, cache, *a, **k))[1]
    model.generate(batch_of(1.0, 1.5), context=["Okonkwo", None], max_length=2)
    first = seen[0]
    tokenizer = model.tokenizer
    row = first[0].tolist()
    assert row[0] == tokenizer.token_id("<|startofprev|>")
    assert row[1:row.index(tokenizer.bos_id)] == tokenizer.encode("Okonkwo")
    assert first[1].tolist()[-4:] == [tokenizer.bos_id] + model.route().task.prompt()  # left-padded, no context


def test_tail_gives_shorter_memories_and_batches_change_nothing(tiny):
    model = mmseq.load(tiny)
    encoder = model.route().encoder
    batch = batch_of(1.0, 3.0)
    with torch.no_grad():
        memory, mask = encoder(batch["inputs"], batch["lengths"])
        alone, alone_mask = encoder(batch["inputs"][:1, :16000], batch["lengths"][:1])
    assert mask.sum(1).tolist() == [150, 250]  # (1 s + 2 s of silence) and (3 s + 2 s) at 50 frames a second
    assert torch.allclose(memory[0, :150], alone[0], atol=1e-5)
    encoder.tail_samples = encoder.window_samples  # the Whisper way: every input a whole window
    with torch.no_grad():
        memory, mask = encoder(batch["inputs"], batch["lengths"])
    assert memory.shape[1] == 1500 and bool(mask.all())


def test_beam_search_and_fused_scorers_over_byte_level_bpe(tiny, tmp_path):
    from mmseq.decoding.lm import build
    from mmseq.decoding.scorers import ContextBoost

    model = mmseq.load(tiny)
    batch = batch_of(1.0, 2.0)
    plain = model.generate(batch, beam_size=3, max_length=6)
    texts = tmp_path / "lm.txt"
    texts.write_text("the weather is fine today\nthe weather was fine\n" * 20)
    build(tiny, [texts], tmp_path / "ngram", 3, 1)
    fused = model.generate(batch, beam_size=3, max_length=6, lm=mmseq.load_lm(str(tmp_path / "ngram"), model.tokenizer), lm_weight=5.0)
    assert model.tokenizer.decode(fused[0][0].tokens).split()[:1] == ["the"]  # a strong LM steers a random model
    boost = ContextBoost(model.tokenizer, [["Okonkwo"], []])
    boosted = model.generate(batch, beam_size=3, max_length=6, scorers=[(boost, 20.0)])
    assert model.tokenizer.decode(boosted[0][0].tokens).startswith("Okonkwo")
    assert boosted[1][0].tokens == plain[1][0].tokens  # the second input's list is empty


def speech_manifest(folder, count=6):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        sf.write(folder / f"u{i}.wav", (rng.standard_normal(16000) * 0.1).astype("float32"), 16000)
        lines.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": ["hello world", "good morning"][i % 2]})
    (folder / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder / "train.jsonl"


def run(folder, manifest, **sections):
    trainer = {"lr": 1e-3, "warmup_steps": 1, "schedule": "constant", "device": "cpu", "log_every": 1,
               "keep_best": 1, "keep_last": 1, "max_epochs": 4, "val_metric": "loss", **sections.pop("trainer", {})}
    config = {"output_dir": str(folder / "out"), "trainer": trainer,
              "data": {"train": str(manifest), "valid": str(manifest), "batch_size": 3, "num_workers": 0}, **sections}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    train(load_config(path))
    return folder / "out"


def losses(out):
    rows = [line.split(",") for line in (out / "log.csv").read_text().splitlines()]
    column = rows[0].index("loss")
    split = rows[0].index("split")
    return [float(r[column]) for r in rows[1:] if r[column] and r[split] == "train"]


def test_fine_tuning_from_an_imported_whisper(tiny, tmp_path):
    from mmseq.training.optim import make_optimizer

    manifest = speech_manifest(tmp_path / "data")
    out = run(tmp_path, manifest, trainer={"init_from": str(tiny), "encoder_lr_scale": 0.1})
    seen = losses(out)
    assert seen[-1] < seen[0]
    tuned = mmseq.load(out / "best")
    assert type(tuned.tokenizer).__name__ == "BPETokenizer" and tuned.route().encoder.tail_samples == 32000
    config = load_config(out / "config.yaml").trainer
    lrs = sorted({group["lr"] for group in make_optimizer(tuned, config).param_groups})
    assert lrs == pytest.approx([1e-4, 1e-3])


@pytest.mark.parametrize("settings", [{"lora": 4, "vectors": 2}, {"deep": True, "vectors": 4}])
def test_prompt_tuning_and_lora_on_an_imported_whisper(tiny, tmp_path, settings):
    manifest = speech_manifest(tmp_path / "data")
    lines = [dict(json.loads(line), task="domain") for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = run(tmp_path, manifest, trainer={"lr": 0.01},
              prompt_tuning={"base": str(tiny), "task": "domain", **settings})
    seen = losses(out)
    assert seen[-1] < seen[0]
    folder = out / "best"
    assert sum(f.stat().st_size for f in folder.iterdir()) < 2_000_000  # a small folder pointing to its base
    tuned = mmseq.load(folder)
    assert "domain" in tuned.routes


def test_int8_compute_type(tiny):
    model, quantized = mmseq.load(tiny), mmseq.load(tiny, compute_type="int8")
    assert any("quantized" in type(m).__module__ for m in quantized.modules())
    batch = batch_of(1.0, 2.0)
    tokens = torch.tensor([[model.tokenizer.bos_id] + model.route().task.prompt()] * 2)
    with torch.no_grad():
        exact = model.decoder(tokens, *model.encode(batch["inputs"], batch["lengths"])).log_softmax(-1)
        close = quantized.decoder(tokens, *quantized.encode(batch["inputs"], batch["lengths"])).log_softmax(-1)
    assert (exact.argmax(-1) == close.argmax(-1)).float().mean() > 0.7
    assert (exact - close).abs().max() < 1.0
    assert len(quantized.generate(batch, beam_size=2, max_length=4)) == 2
    with pytest.raises(mmseq.errors.ConfigError, match="float32 or int8"):
        mmseq.load(tiny, compute_type="int4")


def test_feature_padding_zeros_is_faster_whispers(tiny):
    """faster-whisper pads the log-mel features with zeros (and keeps 10 ms of silence after the
    audio); openai-whisper and transformers pad the waveform with silence."""
    model = mmseq.load(tiny)
    encoder = model.route().encoder
    batch = batch_of(1.0)
    seen = []
    hook = encoder.conv1.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        encoder(batch["inputs"], batch["lengths"])
        encoder.feature_padding = "zeros"
        encoder(batch["inputs"], batch["lengths"])
    hook.remove()
    silence, zeros = seen
    assert torch.equal(silence[..., :101], zeros[..., :101])
    assert bool((zeros[..., 101:] == 0).all()) and bool((silence[..., 105:] < -0.5).all())
