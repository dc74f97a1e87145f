"""Every recipe config reads cleanly: known settings, right types, a registered encoder and task."""

import re
from pathlib import Path

import pytest
import torch

from mmseq.config import config_to_dict, load_config
from mmseq.encoders import ENCODERS
from mmseq.tasks import TASKS

import mmseq.model  # noqa: F401  (registers every built-in part)

CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_recipe_config_loads(path):
    config = load_config(path)
    if isinstance(config.model.encoder, dict) and "name" in config.model.encoder:
        assert config.model.encoder["name"] in ENCODERS
    if config.prompt_tuning.base:  # the task is the base checkpoint's, the route a new one
        assert config.prompt_tuning.task and config.task is None
    elif config.trainer.init_from:  # fine-tuning: the model, its tasks and tokenizer are the checkpoint's
        assert config.task is None and config.model.tasks == {}
    else:
        assert config.task in TASKS or config.task == "multitask"


def test_librispeech_configs_are_sized_like_espnet():
    small = load_config(Path(__file__).parent.parent / "recipes/librispeech/conformer_100h.yaml")
    large = load_config(Path(__file__).parent.parent / "recipes/librispeech/conformer_960h.yaml")
    assert (small.model.encoder["dim"], small.model.encoder["layers"]) == (256, 12)
    assert (large.model.encoder["dim"], large.model.encoder["layers"]) == (512, 12)


# docs/extending.md, section 4: swapping a recipe's encoder is one line of its config. Each case is
# a recipe, the override that does the swap, and what the built encoder must then be.
ROOT = Path(__file__).parent.parent
SWAPS = [
    ("recipes/synth_speech/config.yaml", "model.encoder.name=transformer"),
    ("recipes/synth_caption/config.yaml", "model.encoder.model_name=test_vit"),
]


def doc_diffs() -> dict[str, tuple[str, str]]:
    """The ```diff blocks of docs/extending.md by the recipe file named just before each: (old, new) text."""
    text = (ROOT / "docs" / "extending.md").read_text()
    diffs = {}
    for match in re.finditer(r"`(recipes/[\w/]+\.yaml)`(?:(?!```).)*```diff\n(.*?)```", text, re.DOTALL):
        lines = match.group(2).splitlines()
        old = "\n".join(line[1:] for line in lines if line[:1] in " -")
        new = "\n".join(line[1:] for line in lines if line[:1] in " +")
        diffs[match.group(1)] = (old, new)
    return diffs


def build(config):
    from mmseq.model import Seq2Seq
    from mmseq.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.train(["a red square"], prompt_tokens=["<|asr|>", "<|caption|>", "<|text|>"])
    torch.manual_seed(0)
    return Seq2Seq(config.model, tokenizer, config.task, {}).eval()


@pytest.mark.parametrize("recipe, override", SWAPS, ids=[s[1] for s in SWAPS])
def test_encoder_swap_is_one_line(recipe, override, tmp_path):
    path = ROOT / recipe
    before, after = config_to_dict(load_config(path)), config_to_dict(load_config(path, [override]))
    key, value = override.split("=")
    changed = {k for k in before["model"]["encoder"] if before["model"]["encoder"][k] != after["model"]["encoder"][k]}
    assert changed == {key.rsplit(".", 1)[1]} and after["model"]["encoder"][key.rsplit(".", 1)[1]] == value
    assert {k: v for k, v in before.items() if k != "model"} == {k: v for k, v in after.items() if k != "model"}

    # The docs show the same swap as a diff of this file, and the command line as this override.
    docs = (ROOT / "docs" / "extending.md").read_text()
    assert f"mmseq train {recipe} {override}" in docs
    old, new = doc_diffs()[recipe]
    original = path.read_text()
    assert original.count(old) == 1, f"docs/extending.md's diff no longer matches {recipe}"
    edited = tmp_path / "config.yaml"
    edited.write_text(original.replace(old, new))
    assert config_to_dict(load_config(edited)) == after

    # Both build, and the swapped one is the other kind of encoder with the same memory width.
    original_model, swapped_model = build(load_config(path)), build(load_config(path, [override]))
    for model in (original_model, swapped_model):
        assert model.encoder.output_dim == before["model"]["encoder"]["dim"]
    with torch.no_grad():
        if "speech" in recipe:
            assert (original_model.encoder.layer_type, swapped_model.encoder.layer_type) == ("conformer", "transformer")
            memory, mask = swapped_model.encoder(torch.randn(2, 16000), torch.tensor([16000, 8000]))
            assert memory.shape[-1] == after["model"]["encoder"]["dim"] and mask.sum(1).tolist()[0] > mask.sum(1).tolist()[1]
        else:
            assert type(original_model.encoder.backbone).__name__ == "ConvNeXt"
            assert type(swapped_model.encoder.backbone).__name__ == "VisionTransformer"
            size = after["model"]["encoder"]["image_size"]
            memory, mask = swapped_model.encoder(torch.randn(2, 3, size, size))
            patch = swapped_model.encoder.backbone.patch_embed.patch_size[0]
            assert swapped_model.encoder.grid_shape == (size // patch, size // patch)
            assert memory.shape == (2, (size // patch) ** 2, after["model"]["encoder"]["dim"]) and mask.all()
