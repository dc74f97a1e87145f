"""One model, several tasks: an encoder per task and one decoder; batches that never mix tasks;
each sequence led by its task token; scores split by task; save, load, train and eval."""

import mmseq
import json
import pickle

import pytest
import torch

from conftest import TINY_DECODER, TINY_ENCODER, waveform_batch, write_speech_corpus
from mmseq.data.batching import BucketBatchSampler, bucket_batches
from mmseq.errors import ConfigError, InputError, ManifestError
from mmseq.model import ModelConfig, Seq2Seq
from mmseq.tasks import ExampleDataset
from mmseq.tasks import TaskReferences
from mmseq.tokenizer import CharTokenizer

TEXT_ENCODER = dict(name="text", tokenizer={"type": "char", "vocab": "0123456789"}, dim=32, layers=1, heads=2,
                    ffn_dim=64, dropout=0.0)
NUMBERS = [("12", "one two"), ("7", "seven"), ("305", "three zero five"), ("44", "four four")]


def tasks_config(**changes):
    tasks = {"asr": {"encoder": dict(TINY_ENCODER), "ctc_weight": 0.3, "batch_size": 2.0,
                     "decoding": {"max_length_ratio": 1.0}},
             "text": {"encoder": dict(TEXT_ENCODER), "batch_size": 16, "decoding": {"max_length": 20}}}
    tasks.update(changes)
    return tasks


def make_model(tokenizer, tasks=None, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(decoder=dict(TINY_DECODER), tasks=tasks or tasks_config(), label_smoothing=0.0)
    return Seq2Seq(config, tokenizer, "multitask")


@pytest.fixture
def tokenizer(texts):
    return CharTokenizer.train(texts + [t for _, t in NUMBERS])


@pytest.fixture
def mixed_manifest(tmp_path):
    """Speech lines (task inferred from "audio"), text lines (one with an explicit "task")."""
    speech = write_speech_corpus(tmp_path, count=6)
    lines = speech.read_text().splitlines()
    lines += [json.dumps({"id": f"n{i}", "source": s, "text": t, **({"task": "text"} if i == 0 else {})})
              for i, (s, t) in enumerate(NUMBERS)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- batching ------------------------------------------------------------------------------------
def test_groups_keep_batches_apart_and_one_group_changes_nothing():
    lengths = [3.0, 1.0, 2.0, 5.0, 1.5, 2.5, 4.0, 0.5]
    groups = ["a", "b", "a", "b", "a", "b", "a", "b"]
    batches = bucket_batches(lengths, 6.0, groups=groups)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    assert all(max(lengths[i] for i in b) * len(b) <= 6.0 or len(b) == 1 for b in batches)
    assert bucket_batches(lengths, 6.0, groups=["x"] * 8) == bucket_batches(lengths, 6.0)
    sampler = BucketBatchSampler(lengths, 6.0, groups=groups, seed=3)
    assert all(len({groups[i] for i in b}) == 1 for b in sampler)


# -- model -----------------------------------------------------------------------------------------
def test_one_decoder_an_encoder_per_task_and_checks(tokenizer):
    model = make_model(tokenizer)
    assert set(model.encoders) == {"asr", "text"} and set(model.ctc_heads) == {"asr"}
    assert set(model.routes) == {"asr", "text"} and set(model.task.tasks) == {"asr", "text"}
    assert model.route("text").task.prompt() == [tokenizer.token_id("<|text|>")]
    assert model.route("asr").task.prompt() == [tokenizer.token_id("<|asr|>")]
    assert model.route(kind="text").name == "text"  # one route of that kind: no name needed
    with pytest.raises(InputError, match="no task 'caption'; its tasks: asr, text"):
        model.route("caption")
    with pytest.raises(InputError, match="say which with --task .*its tasks: asr, text"):
        model.route()
    wide = tasks_config(text={"encoder": {**TEXT_ENCODER, "dim": 48}})
    with pytest.raises(ConfigError, match="one width"):
        make_model(tokenizer, wide)
    with pytest.raises(ConfigError, match="unknown setting 'weight'"):
        make_model(tokenizer, tasks_config(text={"encoder": dict(TEXT_ENCODER), "weight": 2}))
    with pytest.raises(ConfigError, match="task: multitask"):
        Seq2Seq(ModelConfig(decoder=dict(TINY_DECODER), tasks=tasks_config()), tokenizer, "asr")
    with pytest.raises(ConfigError, match="task: multitask needs model.tasks"):
        Seq2Seq(ModelConfig(decoder=dict(TINY_DECODER)), tokenizer, "multitask")


def test_mixed_manifest_lines_find_their_task_and_bad_ones_are_named(tokenizer, mixed_manifest, tmp_path):
    task = make_model(tokenizer).task
    examples, errors = task.read(mixed_manifest, training=True)
    assert not errors
    assert sorted(e["task"] for e in examples) == ["asr"] * 6 + ["text"] * 4
    assert all(e["references"].task == e["task"] for e in examples)
    assert task.length(next(e for e in examples if e["task"] == "asr")) == pytest.approx(
        next(e for e in examples if e["task"] == "asr")["duration"] / 2.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(mixed_manifest.read_text()
                   + json.dumps({"id": "x", "image": "a.png", "captions": ["a"]}) + "\n"  # no caption task here
                   + json.dumps({"id": "y", "source": "", "text": "nothing"}) + "\n")  # the text task's own error
    with pytest.raises(ManifestError, match=r"bad\.jsonl:11: cannot tell the task"):
        task.read(bad, training=True)
    examples, errors = task.read(bad, training=True, skip_errors=True)
    assert len(examples) == 10 and sorted(e.line for e in errors) == [11, 12]
    assert "empty source" in str([e for e in errors if e.line == 12][0])


def test_batches_of_each_task_train_their_own_encoder(tokenizer, mixed_manifest):
    model = make_model(tokenizer).train()
    task = model.task
    examples, _ = task.read(mixed_manifest, training=True)
    dataset = ExampleDataset(task, examples, training=True)
    groups = [task.group(e) for e in examples]
    with pytest.raises(InputError, match="mixes the tasks"):
        task.collate([dataset[groups.index("asr")], dataset[groups.index("text")]])
    for name in ("asr", "text"):
        batch = task.collate([dataset[i] for i, g in enumerate(groups) if g == name])
        assert batch["task"] == name
        assert batch["tokens"][0, 1] == tokenizer.token_id(f"<|{name}|>")  # the task token leads
        model.zero_grad()
        out = model(batch)
        assert torch.isfinite(out["loss"]) and ("ctc_loss" in out) == (name == "asr")
        out["loss"].backward()
        other = "text" if name == "asr" else "asr"
        assert all(p.grad is None for p in model.encoders[other].parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders[name].parameters())
        assert model.decoder.embed.weight.grad is not None  # the one decoder learns from every task


def test_scores_split_by_task_and_the_marks_survive_pickling(tokenizer):
    task = make_model(tokenizer).task
    references = [TaskReferences(["one two"], "text"), TaskReferences(["red cat"], "asr"),
                  TaskReferences(["seven"], "text")]
    references = pickle.loads(pickle.dumps(references))  # as DataLoader workers and gathers send them
    assert [r.task for r in references] == ["text", "asr", "text"] and references[0] == ["one two"]
    scores = task.score(references, ["one two", "red bat", "eight"])
    assert scores["text/exact"] == 50.0 and scores["text/examples"] == 2
    assert scores["asr/wer"] == 50.0 and scores["asr/examples"] == 1
    alone = task.score(references[:1], ["one two"])
    assert alone["text/exact"] == 100.0 and "asr/wer" not in alone  # a table of several: always by task
    with pytest.raises(InputError, match="marked with their task"):
        task.score([["one"]], ["one"])


def test_save_load_and_decode_each_task(tokenizer, tmp_path):

    model = make_model(tokenizer).eval()
    mmseq.save(model, tmp_path / "checkpoint")
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert "task" not in saved and set(saved["model"]["tasks"]) == {"asr", "text"}
    loaded = mmseq.load(tmp_path / "checkpoint")
    assert loaded.translate(["12", "7"], beam_size=2) == model.translate(["12", "7"], beam_size=2)
    waves = waveform_batch([0.5, 0.3])
    audio = [waves["inputs"][0, : waves["lengths"][0]], waves["inputs"][1, : waves["lengths"][1]]]
    assert loaded.transcribe(audio, beam_size=2) == model.transcribe(audio, beam_size=2)
    with pytest.raises(InputError, match="say which with --task"):
        loaded.generate({"inputs": torch.zeros(1, 3, dtype=torch.long), "lengths": torch.tensor([3])})
    # Each task's decoding settings apply: the text task stops at max_length=20 new tokens.
    hyps = loaded.generate({"inputs": torch.tensor([[5, 6, 2]]), "lengths": torch.tensor([3]), "task": "text"})
    assert len(hyps[0][0].tokens) <= 20


def test_train_then_eval_each_task_and_the_mix(tokenizer, mixed_manifest, tmp_path):
    import yaml

    from mmseq.cli import main

    config = {"task": "multitask", "output_dir": str(tmp_path / "out"),
              "data": {"train": str(mixed_manifest), "valid": str(mixed_manifest), "batch_size": 1.0,
                       "num_workers": 0},
              "tokenizer": {"type": "char"},
              "model": {"decoder": dict(TINY_DECODER), "tasks": tasks_config()},
              "trainer": {"max_epochs": 1, "warmup_steps": 2, "device": "cpu"},
              "decoding": {"beam_size": 1}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 0
    assert main(["eval", str(tmp_path / "out" / "best"), str(mixed_manifest), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["asr/examples"] == 6 and metrics["text/examples"] == 4 and "asr/wer" in metrics
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text("".join(json.dumps({"id": s, "source": s, "text": t}) + "\n" for s, t in NUMBERS))
    assert main(["eval", str(tmp_path / "out" / "best"), str(numbers), "--out", str(tmp_path / "eval-text")]) == 0
    metrics = json.loads((tmp_path / "eval-text" / "metrics.json").read_text())
    assert {"text/bleu", "text/chrf", "text/exact"} <= set(metrics) and metrics["examples"] == 4
    assert main(["eval", str(tmp_path / "out" / "best"), str(numbers), "--task", "text",
                 "--out", str(tmp_path / "eval-task")]) == 0
    metrics = json.loads((tmp_path / "eval-task" / "metrics.json").read_text())  # one task: its own names
    assert {"bleu", "chrf", "exact"} <= set(metrics) and metrics["examples"] == 4


def test_caption_task_shares_one_encoder_pass_per_image(tmp_path):
    """In a multitask model too, an image's captions are one training example (its encoder runs
    once), the batch budget counts captions, and the loss equals that of one row per pair."""
    from caption_helpers import COLORS, TINY_IMAGE_ENCODER, captions_of, write_caption_corpus

    write_caption_corpus(tmp_path)  # images under tmp_path/img, paths relative to the manifest
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    lines += [json.dumps({"id": s, "source": s, "text": t}) for s, t in NUMBERS]
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    tokenizer = CharTokenizer.train([c for color in COLORS for c in captions_of(color)]
                                    + [t for _, t in NUMBERS])
    tasks = {"caption": {"encoder": dict(TINY_IMAGE_ENCODER), "batch_size": 6},
             "text": {"encoder": dict(TEXT_ENCODER), "batch_size": 16}}
    model = make_model(tokenizer, tasks).eval()
    task = model.task
    examples, errors = task.read(manifest, training=True)
    assert not errors and sorted(e["task"] for e in examples) == ["caption"] * 4 + ["text"] * 4
    image = next(e for e in examples if e["task"] == "caption")
    assert image["texts"] == captions_of(image["id"]) and task.length(image) == pytest.approx(3 / 6)

    dataset = ExampleDataset(task, examples, training=True)
    batch = task.collate([dataset[i] for i, e in enumerate(examples) if e["task"] == "caption"])
    assert batch["task"] == "caption" and batch["inputs"].shape[0] == 4 and batch["tokens"].shape[0] == 12
    assert batch["input_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] and batch["size"] == 12
    assert (batch["tokens"][:, 1] == tokenizer.token_id("<|caption|>")).all()
    with torch.no_grad():
        shared = model(batch)
        pairs = {**batch, "inputs": batch["inputs"][batch["input_index"]]}
        del pairs["input_index"]
        one_per_pair = model(pairs)
    assert shared["examples"] == 12
    torch.testing.assert_close(shared["loss_sum"], one_per_pair["loss_sum"], atol=1e-4, rtol=1e-5)


def test_recipe_single_task_configs_match_the_multitask_entry(tmp_path):
    """recipes/multitask/single_task.py: each single-task model of the comparison has its task's
    encoder, the same decoder, batch budget and trainer, and trains on that task's lines only."""
    import importlib.util
    from pathlib import Path

    import yaml

    from mmseq.config import load_config

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "multitask"
    spec = importlib.util.spec_from_file_location("single_task", recipe / "single_task.py")
    single_task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(single_task)
    multitask = yaml.safe_load((recipe / "config.yaml").read_text())
    for name, entry in multitask["model"]["tasks"].items():
        single = single_task.single_task_config(multitask, name, f"exp/single_{name}")
        assert single["task"] == name and single["output_dir"] == f"exp/single_{name}"
        assert single["model"]["encoder"] == entry["encoder"] and "tasks" not in single["model"]
        assert single["model"]["decoder"] == multitask["model"]["decoder"]
        assert single["model"]["ctc_weight"] == entry.get("ctc_weight", 0.0)
        assert single["data"]["batch_size"] == entry["batch_size"]
        assert single["data"]["train"] == f"data/multitask/{name}/train.jsonl"
        assert single["trainer"] == multitask["trainer"] and single["tokenizer"] == multitask["tokenizer"]
        assert single["decoding"] == {**multitask["decoding"], **entry.get("decoding", {})}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(single))
        assert load_config(path).task == name  # a config mmseq train reads
    with pytest.raises(SystemExit, match="not in model.tasks"):
        single_task.single_task_config(multitask, "ocr", "exp/x")
