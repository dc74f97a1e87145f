"""Text-to-text task: manifests, token budgets, batches, scores; a tiny model learns a small
rule-based mapping, and `mmseq train` / `mmseq eval` run a text config end to end."""

import json
import random

import pytest
import torch

from mmseq.errors import ManifestError
from mmseq.model import ModelConfig, Seq2Seq
from mmseq.tasks import ExampleDataset
from mmseq.tasks.text import exact_match
from mmseq.tokenizer import CharTokenizer

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TINY = dict(dim=32, layers=1, heads=2, ffn_dim=64, dropout=0.0)


def spell_digits(number: str) -> str:
    return " ".join(DIGITS[int(d)] for d in number)


def write_manifest(path, pairs):
    path.write_text("".join(json.dumps({"id": f"s{i}", "source": s, "text": t}) + "\n" for i, (s, t) in enumerate(pairs)))
    return path


def make_model(targets, seed=0):
    torch.manual_seed(seed)
    tokenizer = CharTokenizer.train(targets)
    config = ModelConfig(encoder={"name": "text", "tokenizer": {"type": "char", "vocab": "0123456789"}, **TINY},
                         decoder=dict(TINY, layers=2, max_length=48), ctc_weight=0.0, label_smoothing=0.0)
    return Seq2Seq(config, tokenizer, "text")


def test_read_gives_token_lengths_and_names_bad_lines(tmp_path):
    model = make_model(["one two"])
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "source": "12", "text": "one two"}) + "\n"
                    + json.dumps({"id": "b", "source": "  ", "text": "nothing"}) + "\n"
                    + json.dumps({"id": "c", "source": "1234567", "text": "x"}) + "\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: empty source"):
        model.task.read(path, training=True)
    examples, errors = model.task.read(path, training=True, skip_errors=True)
    assert [e["id"] for e in examples] == ["a", "c"] and len(errors) == 1 and errors[0].line == 2
    # The longer side in tokens: 7 characters of text + </s>; 7 digits + </s>.
    assert model.task.length(examples[0]) == 8.0 and model.task.length(examples[1]) == 8.0


def test_collate_pads_sources_and_leads_targets_with_the_task_token(tmp_path):
    model = make_model(["one two", "three"])
    path = write_manifest(tmp_path / "m.jsonl", [("12", "one two"), ("3", "three")])
    examples, _ = model.task.read(path, training=True)
    dataset = ExampleDataset(model.task, examples, training=True)
    batch = model.task.collate([dataset[0], dataset[1]])
    assert batch["inputs"].tolist() == [[5, 6, 2], [7, 2, 0]] and batch["lengths"].tolist() == [3, 2]
    tokenizer = model.tokenizer
    assert batch["tokens"][:, :2].tolist() == [[tokenizer.bos_id, tokenizer.token_id("<|text|>")]] * 2
    assert batch["references"] == [["one two"], ["three"]] and batch["prefix_lengths"].tolist() == [2, 2]


def test_scores_bleu_chrf_and_exact_match():
    model = make_model(["a"])
    perfect = model.task.score([["one two three four"], ["five six"]], ["one two three four", "five six"])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    assert perfect["exact"] == 100.0
    half = model.task.score([["one two three four"], ["five six"]], ["one two three four", "five seven"])
    assert 0 < half["bleu"] < 100 and half["exact"] == 50.0
    assert exact_match([["a  b", "c"]], [" a b "]) == 100.0 and exact_match([["a b"]], ["a c"]) == 0.0


def test_a_tiny_model_learns_to_spell_digits(tmp_path):
    rng = random.Random(0)
    sources = sorted({"".join(rng.choice("0123456789") for _ in range(rng.randint(1, 3))) for _ in range(60)})
    pairs = [(s, spell_digits(s)) for s in sources]
    model = make_model([t for _, t in pairs])
    examples, _ = model.task.read(write_manifest(tmp_path / "train.jsonl", pairs), training=True)
    dataset = ExampleDataset(model.task, examples, training=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(250):
        batch = model.task.collate([dataset[i] for i in rng.sample(range(len(dataset)), 16)])
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    hypotheses = model.translate([s for s, _ in pairs], beam_size=1)
    assert exact_match([[t] for _, t in pairs], hypotheses) >= 80.0, list(zip(pairs, hypotheses))[:5]


def test_train_and_eval_commands_run_a_text_config(tmp_path):
    import yaml

    from mmseq.cli import main

    pairs = [(str(n), spell_digits(str(n))) for n in range(40)]
    train = write_manifest(tmp_path / "train.jsonl", pairs)
    config = {"task": "text", "output_dir": str(tmp_path / "out"),
              "data": {"train": str(train), "valid": str(train), "batch_size": 64, "num_workers": 0},
              "tokenizer": {"type": "char"},
              "model": {"encoder": {"name": "text", "tokenizer": {"type": "char", "train_from": str(train)}, **TINY},
                        "decoder": dict(TINY), "ctc_weight": 0.0},
              "trainer": {"max_epochs": 2, "warmup_steps": 2, "device": "cpu", "val_metric": "exact"},
              "decoding": {"beam_size": 2, "max_length": 30}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 0
    assert main(["eval", str(tmp_path / "out" / "best"), str(train), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"bleu", "chrf", "exact"} <= set(metrics) and metrics["examples"] == 40
    rows = [json.loads(line) for line in (tmp_path / "eval" / "hypotheses.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(isinstance(r["hypothesis"], str) for r in rows)
