"""recipes/multitask, trained with prompts: prepare_prompts.py gives speech lines a context of
their own words among distractors, and prompts.yaml is config.yaml plus prompting settings."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from mmseq.config import load_config
from mmseq.prompts import Prompting

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "multitask"


def prepare_prompts():
    spec = importlib.util.spec_from_file_location("prepare_prompts", RECIPE / "prepare_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


SPEECH = ["the child put her jersey on backward", "a course of study that is supervised",
          "i still owe for the car", "emma danced slowly on wednesday", "their horse is lost"]


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "multitask"
    train = [{"id": f"train_{i}", "audio": f"/a/{i}.wav", "duration": 1.0, "text": t, "task": "asr"}
             for i, t in enumerate(SPEECH)]
    train += [{"id": "img_0", "image": "/i/0.png", "captions": ["a red star"], "task": "caption"},
              {"id": "num_0", "source": "12", "text": "twelve", "task": "text"}]
    write(folder / "train.jsonl", train)
    write(folder / "valid.jsonl", [{"id": "valid_0", "audio": "/a/v.wav", "duration": 1.0,
                                    "text": "the car is lost", "task": "asr"}])
    write(folder / "asr" / "test.jsonl", [{"id": "test_0", "audio": "/a/t.wav", "duration": 1.0,
                                           "text": "zebras wander quietly tonight", "task": "asr"}])
    return folder


def test_speech_lines_get_their_own_words_among_as_many_distractors(data, tmp_path):
    out = tmp_path / "prompts"
    prepare_prompts().main(["--data", str(data), "--out", str(out), "--max-words", "3"])
    train = read(out / "train.jsonl")
    vocabulary = {w for t in SPEECH for w in t.split()}
    assert [line["id"] for line in train] == [line["id"] for line in read(data / "train.jsonl")]
    for line in train:
        if line["task"] != "asr":
            assert "context" not in line and line in read(data / "train.jsonl")  # other tasks unchanged
            continue
        words = set(line["text"].split())
        own = [w for w in line["context"] if w in words]
        distractors = [w for w in line["context"] if w not in words]
        assert 1 <= len(own) <= 3 and len(distractors) == len(own)
        assert len(set(line["context"])) == len(line["context"])
        assert set(distractors) <= vocabulary  # drawn from the speech training text
        if any(len(w) >= 4 for w in words):
            assert all(len(w) >= 4 for w in own)  # the longer words, where the line has them
    assert [line for line in train if line["task"] == "asr"] == read(out / "asr" / "train.jsonl")
    [test] = read(out / "asr" / "test_context.jsonl")
    own = [w for w in test["context"] if w in test["text"].split()]
    assert own and {w for w in test["context"] if w not in own} <= vocabulary
    assert read(out / "valid.jsonl")[0]["context"]
    # The same seed writes the same files; another seed draws other contexts.
    again = tmp_path / "again"
    prepare_prompts().main(["--data", str(data), "--out", str(again)])
    prepare_prompts().main(["--data", str(data), "--out", str(tmp_path / "other"), "--seed", "1"])
    assert (again / "train.jsonl").read_text() == (tmp_path / "prompts" / "train.jsonl").read_text()
    assert (tmp_path / "other" / "train.jsonl").read_text() != (again / "train.jsonl").read_text()


def test_a_bad_line_is_named(data, tmp_path):
    with open(data / "train.jsonl", "a") as file:
        file.write("{not json\n")
    with pytest.raises(SystemExit, match=r"train\.jsonl:8: not a JSON line"):
        prepare_prompts().main(["--data", str(data), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_prompts_yaml_is_config_yaml_plus_prompting(tmp_path):
    """The comparison is fair: the prompt-trained model differs from the plain one only by its
    prompting settings, its manifests and its output folder."""
    plain = yaml.safe_load((RECIPE / "config.yaml").read_text())
    prompts = yaml.safe_load((RECIPE / "prompts.yaml").read_text())
    settings = {name: entry.pop("prompting", None) for name, entry in prompts["model"]["tasks"].items()}
    assert prompts["model"] == plain["model"] and prompts["trainer"] == plain["trainer"]
    assert prompts["tokenizer"] == plain["tokenizer"] and prompts["decoding"] == plain["decoding"]
    assert prompts["data"]["train"] == "data/multitask_prompts/train.jsonl"
    assert settings["text"] is None and settings["asr"]["context_dropout"] == 0.5
    caption = Prompting.from_settings(settings["caption"], "caption")
    assert caption.prompt_dropout == 0.3
    assert caption.control_tokens({}, "a red star") == ["<|short|>"]
    assert caption.control_tokens({}, " ".join(["word"] * 15)) == ["<|long|>"]
    assert load_config(RECIPE / "prompts.yaml").task == "multitask"  # a config mmseq train reads
