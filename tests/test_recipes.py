"""Every recipe config reads cleanly: known settings, right types, a registered encoder and task."""

from pathlib import Path

import pytest

from mmseq.config import load_config
from mmseq.encoders import ENCODERS
from mmseq.tasks import TASKS

import mmseq.model  # noqa: F401  (registers every built-in part)

CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_recipe_config_loads(path):
    config = load_config(path)
    if isinstance(config.model.encoder, dict) and "name" in config.model.encoder:
        assert config.model.encoder["name"] in ENCODERS
    assert config.task in TASKS or config.task == "multitask"


def test_librispeech_configs_are_sized_like_espnet():
    small = load_config(Path(__file__).parent.parent / "recipes/librispeech/conformer_100h.yaml")
    large = load_config(Path(__file__).parent.parent / "recipes/librispeech/conformer_960h.yaml")
    assert (small.model.encoder["dim"], small.model.encoder["layers"]) == (256, 12)
    assert (large.model.encoder["dim"], large.model.encoder["layers"]) == (512, 12)
