"""Configuration: YAML, dotted overrides, unknown keys and bad values refused, round trip."""

import pytest
import yaml

from mmseq.config import Config, config_to_dict, load_config
from mmseq.errors import ConfigError

YAML = """
task: asr
output_dir: exp/test
data:
  train: data/train.jsonl
  batch_size: 80
tokenizer:
  type: char
model:
  encoder: {name: conformer, dim: 144, layers: 4}
  decoder: {dim: 144, layers: 2}
  ctc_weight: 0.3
trainer:
  max_epochs: 12
  lr: 0.002
decoding:
  beam_size: 4
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(YAML)
    return path


def test_yaml_and_defaults(config_file):
    config = load_config(config_file)
    assert isinstance(config, Config)
    assert config.data.train == "data/train.jsonl" and config.data.batch_size == 80
    assert config.model.encoder == {"name": "conformer", "dim": 144, "layers": 4}
    assert config.trainer.max_epochs == 12 and config.trainer.lr == 0.002
    assert config.decoding.beam_size == 4
    assert config.trainer.grad_clip == 5.0 and config.data.num_workers == 2  # defaults
    assert load_config().task is None  # no file: every default (a model of one asr route)


def test_dotted_overrides(config_file):
    config = load_config(config_file, ["trainer.max_epochs=3", "model.decoder.layers=4", "model.encoder.dim=64",
                                       "data.valid=v.jsonl", "decoding.max_length_ratio=1.0",
                                       "tokenizer.prompt_tokens=[<|asr|>, <|short|>]", "trainer.max_steps=null"])
    assert config.trainer.max_epochs == 3
    assert config.model.decoder == {"dim": 144, "layers": 4}
    assert config.model.encoder == {"name": "conformer", "dim": 64, "layers": 4}  # other settings kept
    assert config.data.valid == "v.jsonl" and config.decoding.max_length_ratio == 1.0
    assert config.tokenizer.prompt_tokens == ["<|asr|>", "<|short|>"]
    assert config.trainer.max_steps is None


def test_encoder_override_without_a_yaml_section_keeps_the_default_name():
    config = load_config(None, ["model.encoder.dim=64"])
    assert config.model.encoder == {"name": "conformer", "dim": 64}


def test_scientific_notation_is_a_number(config_file):
    # YAML 1.1 reads "1e-3" (no dot) as a string; a float setting must still get a float.
    config = load_config(config_file, ["trainer.lr=1e-3", "model.ctc_weight=5e-1"])
    assert config.trainer.lr == 0.001 and isinstance(config.trainer.lr, float)
    assert config.model.ctc_weight == 0.5
    assert isinstance(load_config(None, ["data.batch_size=40"]).data.batch_size, float)


@pytest.mark.parametrize("override, message", [
    ("trainer.max_epoch=3", "trainer.max_epoch"),
    ("traner.max_epochs=3", "traner"),
    ("data.batch=3", "data.batch"),
    ("decoding.beam=3", "decoding.beam"),
])
def test_unknown_keys_are_refused(config_file, override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(config_file, [override])
    assert "known:" in str(caught.value)


def test_unknown_key_in_the_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  max_epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="trainer.learning_rate"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("trainer.max_epochs=many", "trainer.max_epochs"),
    ("trainer.max_epochs=2.5", "trainer.max_epochs"),
    ("trainer.lr=fast", "trainer.lr"),
    ("trainer.compile=maybe", "trainer.compile"),
    ("decoding.beam_size=[1, 2]", "decoding.beam_size"),
    ("model.encoder=conformer", "model.encoder"),
    ("tokenizer.type=5", "tokenizer.type"),
    ("data.train=[a, b]", "data.train"),
])
def test_values_of_the_wrong_type_are_refused(config_file, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_file, [override])


def test_malformed_overrides_and_files(config_file, tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(config_file, ["trainer.max_epochs"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(config_file, ["task.name=asr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)


def test_round_trip_through_yaml(config_file, tmp_path):
    config = load_config(config_file, ["trainer.lr=1e-4", "decoding.bad_endings=[5, 6]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    assert load_config(path) == config
