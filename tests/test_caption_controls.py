"""recipes/synth_caption/controls.yaml: each training caption of a synth_caption manifest gets the
length control its word count gives (or none, for the prompt dropout share); evaluation forces none.
The recipe is config.yaml with only the controls added."""

import json
import subprocess
import sys
from pathlib import Path

from caption_helpers import TINY_IMAGE_ENCODER

from mmseq.config import config_to_dict, load_config
from mmseq.model import ModelConfig, Seq2Seq
from mmseq.prompts import prompt_tokens_of
from mmseq.tasks import ExampleDataset
from mmseq.tokenizer import CharTokenizer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "synth_caption"


def test_controls_recipe_is_the_plain_recipe_with_length_controls():
    plain, controlled = (config_to_dict(load_config(RECIPE / name)) for name in ("config.yaml", "controls.yaml"))
    prompting = controlled["model"].pop("prompting")
    assert prompting["controls"][0]["attribute"] == "words" and list(prompting["controls"][0]["bins"]) == \
        ["<|short|>", "<|long|>"]
    assert 0 < prompting["prompt_dropout"] < 0.5
    plain["model"].pop("prompting", None)
    plain.pop("output_dir"), controlled.pop("output_dir")
    assert controlled == plain  # the same data, model and schedule: the comparison is fair


def test_training_rows_carry_short_or_long_by_word_count_and_evaluation_none(tmp_path):
    prompting = config_to_dict(load_config(RECIPE / "controls.yaml"))["model"]["prompting"]
    bound = prompting["controls"][0]["bins"]["<|short|>"]
    subprocess.run([sys.executable, str(RECIPE / "prepare.py"), "--out", str(tmp_path), "--num-train", "24",
                    "--num-valid", "2", "--num-test", "2", "--image-size", "32", "--jobs", "1"],
                   check=True, capture_output=True)
    manifest = tmp_path / "train.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    # The tokenizer learns the control tokens the config declares (the manifest names none).
    controls = prompt_tokens_of(lines, {"caption": {"prompting": prompting}})
    assert controls == ["<|short|>", "<|long|>"]
    captions = [text for line in lines for text in line["captions"]]
    tokenizer = CharTokenizer.train(captions, prompt_tokens=["<|asr|>", "<|caption|>", "<|text|>", *controls])
    config = ModelConfig(encoder=dict(TINY_IMAGE_ENCODER), ctc_weight=0.0, prompting=prompting,
                         decoder=dict(dim=32, layers=1, heads=2, ffn_dim=64, dropout=0.0, max_length=256))
    model = Seq2Seq(config, tokenizer, "caption")
    short, long = tokenizer.token_id("<|short|>"), tokenizer.token_id("<|long|>")
    start = [tokenizer.bos_id, tokenizer.token_id("<|caption|>")]

    examples, errors = model.task.read(manifest, training=True)
    assert not errors
    dataset = ExampleDataset(model.task, examples, training=True)
    batch = model.task.collate([dataset[i] for i in range(len(dataset))])
    assert batch["size"] == len(captions) == 120
    kinds = []  # per row: "short", "long" or None (dropped)
    for row, prefix, text in zip(batch["tokens"].tolist(), batch["prefix_lengths"].tolist(), captions, strict=True):
        assert row[:2] == start
        kind = {(): None, (short,): "short", (long,): "long"}[tuple(row[2:prefix])]
        if kind is not None:
            assert kind == ("short" if len(text.split()) <= bound else "long"), text
        assert row[prefix:][: len(tokenizer.encode(text))] == tokenizer.encode(text)  # the text follows, scored
        kinds.append(kind)
    assert kinds.count("short") >= 10 and kinds.count("long") >= 10
    assert 0.05 < kinds.count(None) / len(kinds) < 0.4  # prompt_dropout 0.2
    # Some images have captions of both kinds: the control, not the picture, says which to write.
    per_image = [set(kinds[5 * i: 5 * i + 5]) - {None} for i in range(len(examples))]
    assert any(kind == {"short", "long"} for kind in per_image)
    out = model.train()(batch)
    assert out["examples"] == 120 and bool(out["loss"].isfinite())

    # Evaluation never reads a reference's length: no control is forced, only the route's prompt.
    examples, _ = model.task.read(manifest, training=False)
    evaluation = ExampleDataset(model.task, examples, training=False)
    batch = model.task.collate([evaluation[i] for i in range(len(evaluation))])
    assert batch["prompts"] == [[]] * len(examples)
    assert batch["prefix_lengths"].tolist() == [2] * len(examples)
