"""Image encoders: shapes, grid, weights files, freezing, gradients, data config and transforms."""

import math

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torchvision
from PIL import Image

from mmseq.encoders import create_encoder, list_encoders
from mmseq.encoders.image import sinusoidal_position_2d, trainable_group_count
from mmseq.errors import CheckpointError, ConfigError, InputError

# (registered name, settings, expected grid at 64x64): tiny models so the whole file runs on a CPU.
TINY = [
    ("timm", dict(model_name="resnet18"), (2, 2)),
    ("timm", dict(model_name="test_vit"), (4, 4)),  # patch 16, class token dropped
    ("timm", dict(model_name="test_convnext"), (2, 2)),
    ("timm", dict(model_name="test_mambaout"), (2, 2)),  # NHWC output, like Swin
    ("torchvision", dict(model_name="resnet18"), (2, 2)),
]
IDS = [f"{name}-{settings['model_name']}" for name, settings, _ in TINY]


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def build(name, settings, **extra):
    return create_encoder(name, **{"dim": 32, "image_size": 64, **settings, **extra})


def test_both_families_are_registered():
    assert {"timm", "torchvision"} <= set(list_encoders())


@pytest.mark.parametrize("name, settings, grid", TINY, ids=IDS)
def test_forward_backward_shapes_and_gradients(name, settings, grid):
    encoder = build(name, settings).train()
    images = torch.randn(2, 3, 64, 64)
    memory, mask = encoder(images, None)
    assert memory.shape == (2, grid[0] * grid[1], 32) and memory.dtype == torch.float32
    assert mask.shape == (2, grid[0] * grid[1]) and mask.dtype == torch.bool and mask.all()
    assert encoder.grid_shape == grid and encoder.output_dim == 32 and encoder.modality == "image"
    (memory * torch.randn_like(memory)).sum().backward()
    trainable = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    assert any(n.startswith("backbone.") for n, _ in trainable)
    for parameter_name, parameter in trainable:
        assert parameter.grad is not None, f"{parameter_name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), parameter_name


@pytest.mark.parametrize("name, settings, grid", TINY[:2], ids=IDS[:2])
def test_non_square_images_give_a_row_major_grid(name, settings, grid):
    encoder = build(name, settings).eval()
    memory, _ = encoder(torch.randn(1, 3, 64, 96))
    rows, cols = encoder.grid_shape
    assert cols == rows * 3 // 2 and memory.shape[1] == rows * cols


def test_vit_memory_is_the_patch_tokens_in_row_major_order():
    encoder = build("timm", dict(model_name="test_vit"), position="none").eval()
    images = torch.randn(2, 3, 64, 64)
    tokens = encoder.backbone.forward_features(images)[:, encoder.num_prefix_tokens :]  # (2, 16, C)
    expected = encoder.norm(encoder.projection(tokens))
    torch.testing.assert_close(encoder(images)[0], expected)


def test_cnn_memory_is_the_feature_map_flattened_row_major():
    encoder = build("timm", dict(model_name="resnet18"), position="none").eval()
    images = torch.randn(1, 3, 96, 64)
    feature_map = encoder.backbone.forward_features(images)  # (1, 512, 3, 2)
    memory, _ = encoder(images)
    assert encoder.grid_shape == (3, 2)
    expected_cell = encoder.norm(encoder.projection(feature_map[0, :, 2, 1]))  # row 2, column 1
    torch.testing.assert_close(memory[0, 2 * 2 + 1], expected_cell)


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "none"])
def test_positions_tell_identical_grid_cells_apart(position, monkeypatch):
    encoder = build("timm", dict(model_name="test_convnext"), position=position).eval()
    same_cells = torch.ones(1, 9, encoder.projection.in_features)  # every cell of a 3x3 grid alike
    monkeypatch.setattr(encoder, "backbone_features", lambda images: (same_cells, (3, 3)))
    memory, _ = encoder(torch.zeros(1, 3, 96, 96))
    distances = torch.cdist(memory[0], memory[0]) + torch.eye(9) * 1e3  # (9, 9), diagonal left out
    if position == "none":
        assert distances.min() < 1e-4
    else:
        assert distances.min() > 1e-2


def test_sinusoidal_positions():
    codes = sinusoidal_position_2d(3, 4, 16)
    assert codes.shape == (12, 16)
    grid = codes.reshape(3, 4, 16)
    assert torch.equal(grid[:, 0, :8], grid[:, 3, :8])  # first half depends on the row only
    assert torch.equal(grid[0, :, 8:], grid[2, :, 8:])  # second half on the column only
    assert torch.allclose(grid[0, 0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    assert len({tuple(row.tolist()) for row in codes}) == 12
    with pytest.raises(ConfigError, match="divisible by 4"):
        sinusoidal_position_2d(2, 2, 10)


def test_learned_positions_get_gradients():
    encoder = build("timm", dict(model_name="test_convnext"), position="learned")
    memory, _ = encoder(torch.randn(2, 3, 64, 64))
    memory.pow(2).sum().backward()
    assert encoder.row_embedding.weight.grad[:2].abs().sum() > 0
    assert encoder.row_embedding.weight.grad[2:].abs().sum() == 0  # rows beyond the grid unused


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_timm_weights_file_goes_through_timm_pretrained_path(tmp_path, suffix):
    source = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(torch.randn_like(parameter))
    state = {key: value.contiguous() for key, value in source.state_dict().items()}
    path = tmp_path / f"weights.{suffix}"
    if suffix == "safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    encoder = build("timm", dict(model_name="resnet18"), pretrained_file=str(path))
    loaded = encoder.backbone.state_dict()
    assert "fc.weight" not in loaded or loaded["fc.weight"].numel() == 0  # classifier dropped
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)
    assert not torch.equal(loaded["conv1.weight"], timm.create_model("resnet18").state_dict()["conv1.weight"])


def test_vit_weights_file_resizes_position_embeddings(tmp_path):
    source = timm.create_model("test_vit", pretrained=False, img_size=160)
    path = tmp_path / "vit.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    encoder = build("timm", dict(model_name="test_vit"), pretrained_file=str(path))
    torch.testing.assert_close(encoder.backbone.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert encoder(torch.randn(1, 3, 64, 64))[0].shape == (1, 16, 32)


def test_bad_weights_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.safetensors.*not found"):
        build("timm", dict(model_name="resnet18"), pretrained_file=str(tmp_path / "missing.safetensors"))
    wrong = tmp_path / "wrong.safetensors"
    safetensors.torch.save_file(timm.create_model("test_convnext").state_dict(), str(wrong))
    with pytest.raises(CheckpointError, match="wrong.safetensors"):
        build("timm", dict(model_name="resnet18"), pretrained_file=str(wrong))
    with pytest.raises(CheckpointError, match="wrong.safetensors"):
        build("torchvision", dict(model_name="resnet18"), pretrained_file=str(wrong))


def test_torchvision_weights_file(tmp_path):
    source = torchvision.models.get_model("resnet18", weights=None)
    path = tmp_path / "tv.pth"
    torch.save(source.state_dict(), path)
    encoder = build("torchvision", dict(model_name="resnet18"), pretrained_file=str(path))
    torch.testing.assert_close(encoder.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


@pytest.mark.parametrize("name", ["timm", "torchvision"])
def test_frozen_backbone_gets_no_gradient_and_stays_in_eval_mode(name):
    encoder = build(name, dict(model_name="resnet18"), trainable="none").train()
    assert not encoder.backbone.training and encoder.projection.training
    batchnorm = next(m for m in encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    statistics = batchnorm.running_mean.clone()
    memory, _ = encoder(torch.randn(2, 3, 64, 64) * 3 + 1)
    memory.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in encoder.backbone.parameters())
    assert encoder.projection.weight.grad is not None
    assert torch.equal(batchnorm.running_mean, statistics)


@pytest.mark.parametrize("name", ["timm", "torchvision"])
def test_last_stage_only(name):
    encoder = build(name, dict(model_name="resnet18"), trainable="last:1").train()
    memory, _ = encoder(torch.randn(2, 3, 64, 64))
    memory.sum().backward()
    for parameter_name, parameter in encoder.backbone.named_parameters():
        in_last_stage = parameter_name.startswith("layer4.")
        assert parameter.requires_grad == in_last_stage, parameter_name
        assert (parameter.grad is not None) == in_last_stage, parameter_name
    assert encoder.backbone.layer4.training and not encoder.backbone.layer1[0].bn1.training


def test_last_blocks_of_a_vit_include_its_final_norm():
    encoder = build("timm", dict(model_name="test_vit"), trainable="last:2")
    trained = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
               for n, p in encoder.backbone.named_parameters() if p.requires_grad}
    assert trained == {"blocks.4", "blocks.5", "norm"}


def test_trainable_settings_are_checked():
    assert trainable_group_count("none", 5) == 0
    assert trainable_group_count("all", 5) == 5
    assert trainable_group_count("last:2", 5) == 2
    for bad in ("some", "last:0", "last:6", "last:x"):
        with pytest.raises(ConfigError):
            trainable_group_count(bad, 5)
    with pytest.raises(ConfigError, match="stages"):
        build("timm", dict(model_name="resnet18"), trainable="last:9")


def test_unknown_models_and_settings():
    with pytest.raises(ConfigError, match="unknown timm model"):
        create_encoder("timm", model_name="resnet_does_not_exist")
    with pytest.raises(ConfigError, match="unknown torchvision"):
        create_encoder("torchvision", model_name="resnet_does_not_exist")
    with pytest.raises(ConfigError, match="position"):
        build("timm", dict(model_name="test_vit"), position="random")
    with pytest.raises(InputError, match="batch, 3"):
        build("timm", dict(model_name="test_vit"))(torch.randn(2, 1, 64, 64))


def test_timm_data_config_comes_from_timm():
    encoder = create_encoder("timm", model_name="test_vit", dim=32)
    expected = timm.data.resolve_data_config({}, model=encoder.backbone)
    assert encoder.data_config() == expected
    assert encoder.data_config()["mean"] == (0.5, 0.5, 0.5)
    assert build("timm", dict(model_name="test_vit")).data_config()["input_size"] == (3, 64, 64)


def test_torchvision_data_config_comes_from_its_weights_metadata():
    config = build("torchvision", dict(model_name="resnet18"), image_size=None).data_config()
    assert config["input_size"] == (3, 224, 224) and config["interpolation"] == "bilinear"
    assert config["mean"] == (0.485, 0.456, 0.406) and math.isclose(config["crop_pct"], 224 / 256)


def test_transforms_make_normalized_tensors_and_never_flip():
    encoder = build("timm", dict(model_name="test_vit"))
    array = np.zeros((48, 80, 3), dtype=np.uint8)
    array[:, :40] = 255  # white left half, black right half
    image = Image.fromarray(array)
    evaluation = encoder.transform(train=False)(image)
    assert evaluation.shape == (3, 64, 64) and evaluation.dtype == torch.float32
    assert torch.allclose(evaluation[:, :, 2], torch.ones(3, 64), atol=0.02)  # (1 - 0.5) / 0.5
    assert torch.allclose(evaluation[:, :, -3], -torch.ones(3, 64), atol=0.02)
    training = encoder.transform(train=True)
    for _ in range(20):
        augmented = training(image)
        assert augmented.shape == (3, 64, 64)
        assert augmented[:, :, :4].mean() > augmented[:, :, -4:].mean()  # left stays left
    unaugmented = build("timm", dict(model_name="test_vit"), augment=False).transform(train=True)
    torch.testing.assert_close(unaugmented(image), evaluation)


def test_center_crop_mode_follows_timm():
    encoder = build("timm", dict(model_name="test_vit"), crop_mode="center")
    transform = encoder.transform(train=False)
    assert transform(Image.new("RGB", (100, 50))).shape == (3, 64, 64)
    assert any(type(t).__name__ == "CenterCrop" for t in transform.transforms)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_name", ["resnet50", "convnext_tiny", "vit_base_patch16_224", "swin_tiny_patch4_window7_224"]
)
def test_full_size_timm_backbones(model_name):
    encoder = create_encoder("timm", model_name=model_name, dim=64, image_size=224 if "swin" not in model_name else None)
    memory, mask = encoder(torch.randn(1, 3, 224, 224))
    rows, cols = encoder.grid_shape
    assert memory.shape == (1, rows * cols, 64) and mask.all() and rows == cols == (14 if "vit" in model_name else 7)
