"""Image encoders: a pretrained-style backbone's last feature grid, projected to the decoder width.

Two families share one head (:class:`ImageEncoder`):

- ``"timm"``: any timm model by name (``resnet50``, ``convnext_tiny``, ``vit_base_patch16_224``,
  ``swin_tiny_patch4_window7_224``, ``test_vit`` ...), through ``forward_features``.
- ``"torchvision"``: torchvision classification CNNs by name (``resnet18``, ``convnext_tiny``,
  ``efficientnet_b0`` ...), cut before their pooling and classifier.

The backbone gives a grid of feature vectors (``rows x cols``): a CNN's last feature map, or a
ViT's / Swin's patch tokens. Each grid cell becomes one memory vector, row-major:
``Linear(channels, dim)``, plus a 2-D position code, then ``LayerNorm``. ViT class and register
tokens are dropped, so the memory is exactly the spatial grid that ``grid_shape`` describes (the
patch tokens have already attended to them). Images are always full size, so the mask is all True.

Which backbone parameters train is set by ``trainable``: ``"all"``, ``"none"`` (frozen and kept in
eval mode, so BatchNorm statistics stay those of the weights) or ``"last:N"`` (only the last N
stages / blocks, as timm's ``group_matcher`` splits the model; the stem and earlier stages are
frozen and their BatchNorm layers kept in eval mode).
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from pathlib import Path

import timm
import timm.data
import torch
import torchvision
from timm.models import load_state_dict
from timm.models._manipulate import group_with_matcher
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import CheckpointError, ConfigError, InputError
from .base import Encoder, register_encoder

POSITION_KINDS = ("sinusoidal", "learned", "none")
MAX_LEARNED_GRID = 64  # rows (and columns) a learned position table covers
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sinusoidal_position_2d(rows: int, cols: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine/cosine position codes, ``(rows * cols, dim)`` in row-major order.

    The first half of each vector encodes the row, the second half the column, each as the usual
    1-D transformer code over ``dim // 2`` channels (half sines, half cosines). ``dim`` must be a
    multiple of 4.
    """
    if dim % 4:
        raise ConfigError(f"sinusoidal 2-D positions need a dim divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = temperature ** (-torch.arange(quarter, dtype=torch.float32) / quarter)  # (dim/4,)
    row_angles = torch.arange(rows, dtype=torch.float32)[:, None] * frequencies  # (rows, dim/4)
    col_angles = torch.arange(cols, dtype=torch.float32)[:, None] * frequencies  # (cols, dim/4)
    row_codes = torch.cat([row_angles.sin(), row_angles.cos()], dim=1)  # (rows, dim/2)
    col_codes = torch.cat([col_angles.sin(), col_angles.cos()], dim=1)  # (cols, dim/2)
    grid = torch.cat(
        [row_codes[:, None, :].expand(rows, cols, -1), col_codes[None, :, :].expand(rows, cols, -1)], dim=2
    )
    return grid.reshape(rows * cols, dim)


def trainable_group_count(trainable: str, num_groups: int) -> int:
    """How many trailing parameter groups train for a ``trainable`` setting.

    ``"none"`` -> 0, ``"all"`` -> ``num_groups``, ``"last:N"`` -> N (1 <= N <= num_groups).
    """
    if trainable == "none":
        return 0
    if trainable == "all":
        return num_groups
    match = re.fullmatch(r"last:(\d+)", trainable)
    if not match:
        raise ConfigError(f"trainable must be 'all', 'none' or 'last:N', got {trainable!r}")
    count = int(match.group(1))
    if not 1 <= count <= num_groups:
        raise ConfigError(f"trainable={trainable!r}: this backbone has {num_groups} stages/blocks (stem included)")
    return count


def _check_weights_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: pretrained weights file not found")
    return path


class _MissingKeysLog(logging.Handler):
    """Collects the keys timm reports missing while it loads pretrained weights (it only logs them)."""

    logger = logging.getLogger("timm.models._builder")

    def __init__(self):
        super().__init__(logging.INFO)
        self.missing_keys: list[str] = []

    def emit(self, record):
        match = re.match(r"Missing keys \((.*)\) discovered", record.getMessage(), re.DOTALL)
        if match:
            self.missing_keys += match.group(1).split(", ")

    def __enter__(self):
        self.saved = self.logger.level, self.logger.propagate
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # its "expected if adapted" messages would only mislead
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.level, self.logger.propagate = self.saved


class ImageEncoder(Encoder):
    """Shared head of the image encoders: projection, 2-D positions, freezing, transforms.

    A subclass builds ``self.backbone``, implements :meth:`backbone_features`,
    :meth:`parameter_groups` and :meth:`data_config`, then calls :meth:`_build_head`.

    ``forward(images, lengths=None)``:
        images: ``(batch, 3, height, width)``, normalized as :meth:`transform` makes them.
        lengths: ignored (images are full size).
        returns: ``memory`` ``(batch, rows * cols, dim)`` and an all-True ``mask``
            ``(batch, rows * cols)``; ``self.grid_shape`` is set to ``(rows, cols)``.
    """

    modality = "image"

    def backbone_features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(batch, 3, H, W)`` -> features ``(batch, rows * cols, channels)`` row-major, ``(rows, cols)``."""
        raise NotImplementedError

    def parameter_groups(self) -> list[list[str]]:
        """Backbone parameter names in groups from stem to last stage, for ``trainable="last:N"``."""
        raise NotImplementedError

    def data_config(self) -> dict:
        """``mean``, ``std``, ``input_size`` ``(3, H, W)``, ``interpolation``, ``crop_pct``, ``crop_mode``."""
        raise NotImplementedError

    def _build_head(self, dim: int, trainable: str, position: str, augment: bool, crop_mode: str) -> None:
        if position not in POSITION_KINDS:
            raise ConfigError(f"position must be one of {POSITION_KINDS}, got {position!r}")
        if crop_mode not in ("squash", "center"):
            raise ConfigError(f"crop_mode must be 'squash' or 'center', got {crop_mode!r}")
        self.output_dim = dim
        self.trainable = trainable
        self.position = position
        self.augment = augment
        self.crop_mode = crop_mode
        self.grid_shape: tuple[int, int] | None = None

        groups = self.parameter_groups()
        trained_groups = groups[len(groups) - trainable_group_count(trainable, len(groups)):]
        trained_names = {name for group in trained_groups for name in group}
        feature_dim, unused = self._probe(backward=bool(trained_names))
        for name, parameter in self.backbone.named_parameters():
            # Parameters forward_features never touches (classifier-head norms, attention pools)
            # are frozen too, so that every trainable parameter gets a gradient.
            parameter.requires_grad_(name in trained_names and name not in unused)
        self.backbone_trains = any(p.requires_grad for p in self.backbone.parameters())

        self.projection = nn.Linear(feature_dim, dim)
        if position == "sinusoidal":
            sinusoidal_position_2d(1, 1, dim)  # fail now, not at the first batch, on a bad dim
        if position == "learned":
            self.row_embedding = nn.Embedding(MAX_LEARNED_GRID, dim)
            self.column_embedding = nn.Embedding(MAX_LEARNED_GRID, dim)
            nn.init.normal_(self.row_embedding.weight, std=0.02)
            nn.init.normal_(self.column_embedding.weight, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.train(self.training)

    def _probe(self, backward: bool) -> tuple[int, set[str]]:
        """One batch-1 pass at the configured input size: the feature width, and (when
        ``backward``) the names of backbone parameters that get no gradient."""
        was_training = self.backbone.training
        self.backbone.eval()
        probe = torch.zeros(1, *self.data_config()["input_size"])
        with torch.set_grad_enabled(backward):
            features, _ = self.backbone_features(probe)
            if backward:
                features.float().sum().backward()
        unused = set()
        if backward:
            unused = {name for name, p in self.backbone.named_parameters() if p.grad is None}
            self.backbone.zero_grad(set_to_none=True)
        self.backbone.train(was_training)
        return features.shape[-1], unused

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and hasattr(self, "backbone_trains"):
            if not self.backbone_trains:
                self.backbone.eval()
            for module in self.backbone.modules():
                # A frozen BatchNorm must not drift its running statistics away from the weights.
                if isinstance(module, _BatchNorm) and not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    def position_codes(self, rows: int, cols: int, device, dtype) -> torch.Tensor | None:
        """``(rows * cols, dim)`` position codes, or None when ``position="none"``."""
        if self.position == "sinusoidal":
            return sinusoidal_position_2d(rows, cols, self.output_dim).to(device=device, dtype=dtype)
        if self.position == "learned":
            if rows > MAX_LEARNED_GRID or cols > MAX_LEARNED_GRID:
                raise InputError(f"image grid {rows}x{cols} exceeds the learned position table ({MAX_LEARNED_GRID})")
            row_ids = torch.arange(rows, device=device)
            col_ids = torch.arange(cols, device=device)
            codes = self.row_embedding(row_ids)[:, None, :] + self.column_embedding(col_ids)[None, :, :]
            return codes.reshape(rows * cols, -1)
        return None

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.ndim != 4 or inputs.shape[1] != 3:
            raise InputError(f"image encoder expects (batch, 3, height, width), got {tuple(inputs.shape)}")
        # A fully frozen backbone needs no graph: saves the memory of its activations.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone_trains):
            features, (rows, cols) = self.backbone_features(inputs)  # (B, rows*cols, C)
        self.grid_shape = (rows, cols)
        memory = self.projection(features)  # (B, rows*cols, dim)
        codes = self.position_codes(rows, cols, memory.device, memory.dtype)
        if codes is not None:
            memory = memory + codes
        memory = self.norm(memory)
        mask = torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
        return memory, mask

    def transform(self, train: bool = False):
        """A callable PIL image -> ``(3, H, W)`` float tensor, normalized for this backbone.

        Evaluation: resize to ``input_size``; ``crop_mode="squash"`` (default) resizes the whole
        image (a caption may be about anything in it), ``"center"`` is timm's usual resize then
        center crop by ``crop_pct``. Training with ``augment``: a mild random resized crop (80-100%
        of the area) and brightness/contrast/saturation jitter; never a horizontal flip nor a hue
        change, because captions say "left", "right" and colour names.
        """
        config = self.data_config()
        common = dict(
            input_size=config["input_size"], interpolation=config["interpolation"], mean=config["mean"], std=config["std"]
        )
        if train and self.augment:
            return timm.data.create_transform(
                **common, is_training=True, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.0, color_jitter=0.1
            )
        if self.crop_mode == "squash":
            return timm.data.create_transform(**common, is_training=False, crop_pct=1.0, crop_mode="squash")
        return timm.data.create_transform(**common, is_training=False, crop_pct=config["crop_pct"], crop_mode="center")


@register_encoder("timm")
class TimmImageEncoder(ImageEncoder):
    """Any timm model as an image encoder (see the module docstring).

    Args:
        model_name: a timm model name, e.g. ``"resnet50"``, ``"vit_base_patch16_224"``.
        dim: width of the memory vectors (the decoder width).
        pretrained: load timm's pretrained weights from the hub (needs the network).
        pretrained_file: a local ``.safetensors`` / ``.pth`` / ``.bin`` state dict, loaded through
            timm's own pretrained path (classifier dropped, position embeddings resized).
        trainable: ``"all"``, ``"none"`` or ``"last:N"``.
        image_size: input side in pixels; also given to models that take ``img_size`` (ViT, Swin).
            None keeps the model's own input size.
        position: ``"sinusoidal"`` (fixed, any grid size), ``"learned"`` (row + column tables) or
            ``"none"``.
        augment: light training augmentation in :meth:`transform`.
        crop_mode: ``"squash"`` or ``"center"`` for evaluation transforms.
    """

    def __init__(
        self,
        model_name: str = "resnet50",
        dim: int = 256,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        trainable: str = "all",
        image_size: int | None = None,
        position: str = "sinusoidal",
        augment: bool = True,
        crop_mode: str = "squash",
    ):
        super().__init__()
        if not timm.is_model(model_name):
            close = timm.list_models(f"*{model_name}*")[:10]
            raise ConfigError(f"unknown timm model {model_name!r}; similar names: {close or 'none'}")
        self.model_name = model_name
        self.image_size = image_size
        self.backbone = self._create_backbone(model_name, pretrained, pretrained_file, image_size)
        self.num_prefix_tokens = getattr(self.backbone, "num_prefix_tokens", 0)
        self.channels_last = getattr(self.backbone, "output_fmt", "NCHW") == "NHWC"  # Swin, MambaOut
        self._build_head(dim, trainable, position, augment, crop_mode)

    @staticmethod
    def _create_backbone(model_name, pretrained, pretrained_file, image_size) -> nn.Module:
        kwargs: dict = {"num_classes": 0}
        if pretrained_file is not None:
            path = _check_weights_file(pretrained_file)
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        elif pretrained:
            kwargs["pretrained"] = True
        size_kwargs = {"img_size": image_size} if image_size is not None else {}
        source = pretrained_file or f"pretrained weights of {model_name!r}"
        try:
            with _MissingKeysLog() as log:
                try:
                    backbone = timm.create_model(model_name, **kwargs, **size_kwargs)
                except TypeError as error:
                    if "img_size" not in str(error):
                        raise
                    backbone = timm.create_model(model_name, **kwargs)  # a CNN: any input size works
        except Exception as error:
            if pretrained_file is not None:
                raise CheckpointError(f"{pretrained_file}: does not fit timm model {model_name!r}: {error}") from error
            if pretrained:
                raise ConfigError(
                    f"could not fetch pretrained weights for timm model {model_name!r} ({error}); "
                    "download them once and pass pretrained_file=PATH"
                ) from error
            raise
        # timm loads non-strictly once the classifier is dropped, so a wrong file would otherwise
        # leave random weights behind silently. Missing buffers may be recomputed; parameters not.
        parameter_names = {name for name, _ in backbone.named_parameters()}
        missing = [key for key in log.missing_keys if key in parameter_names]
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise CheckpointError(f"{source}: lacks {len(missing)} weights of timm model {model_name!r}: {shown}")
        return backbone

    def backbone_features(self, images):
        features = self.backbone.forward_features(images)
        if features.ndim == 4:
            if self.channels_last:
                features = features.permute(0, 3, 1, 2)
            rows, cols = features.shape[-2:]
            return features.flatten(2).transpose(1, 2), (rows, cols)
        if features.ndim == 3:  # tokens (B, prefix + rows*cols, C)
            tokens = features[:, self.num_prefix_tokens :]
            height, width = images.shape[-2:]
            rows = round(math.sqrt(tokens.shape[1] * height / width))
            cols = tokens.shape[1] // max(rows, 1)
            if rows * cols != tokens.shape[1]:
                raise ConfigError(f"timm model {self.model_name!r}: cannot lay {tokens.shape[1]} tokens on a grid")
            return tokens, (rows, cols)
        raise ConfigError(f"timm model {self.model_name!r}: forward_features gave shape {tuple(features.shape)}")

    def parameter_groups(self):
        matcher = self.backbone.group_matcher(coarse=True)
        if isinstance(matcher, dict):
            # Whatever the matcher leaves out (final norms, necks) runs after the last stage:
            # the MATCH_PREV_GROUP suffix (99999,) folds it into that stage's group.
            matcher = {**matcher, "_rest": [(r".*", (99999,))]}
        groups = group_with_matcher(self.backbone.named_parameters(), matcher)
        return [groups[index] for index in sorted(groups)]

    def data_config(self):
        overrides = {"input_size": (3, self.image_size, self.image_size)} if self.image_size else {}
        return dict(timm.data.resolve_data_config(overrides, model=self.backbone))


@register_encoder("torchvision")
class TorchvisionImageEncoder(ImageEncoder):
    """A torchvision classification CNN as an image encoder: its last convolutional feature map.

    Args as :class:`TimmImageEncoder`; ``model_name`` is a ``torchvision.models.get_model`` name
    (``resnet18``, ``resnet50``, ``convnext_tiny``, ``efficientnet_b0`` ...). ``pretrained_file`` is
    a state dict of the whole torchvision model (classifier included). For ``trainable="last:N"`` a
    group is one top-level child of the trunk: a ResNet stage (``layer4``), or one entry of
    ``features`` for ConvNeXt / EfficientNet (where a downsampling layer is its own entry). :meth:`data_config` comes
    from the default weights' transforms (metadata only, nothing is downloaded), or ImageNet
    defaults (224, bilinear, crop 0.875) for a model without registered weights.
    """

    def __init__(
        self,
        model_name: str = "resnet50",
        dim: int = 256,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        trainable: str = "all",
        image_size: int | None = None,
        position: str = "sinusoidal",
        augment: bool = True,
        crop_mode: str = "squash",
    ):
        super().__init__()
        if model_name not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(f"unknown torchvision classification model {model_name!r}")
        self.model_name = model_name
        self.image_size = image_size
        weights = "DEFAULT" if pretrained and pretrained_file is None else None
        try:
            model = torchvision.models.get_model(model_name, weights=weights)
        except Exception as error:
            if weights is None:
                raise
            raise ConfigError(
                f"could not fetch pretrained weights for torchvision model {model_name!r} ({error}); "
                "download them once and pass pretrained_file=PATH"
            ) from error
        if pretrained_file is not None:
            path = _check_weights_file(pretrained_file)
            try:
                model.load_state_dict(load_state_dict(str(path)))
            except Exception as error:
                raise CheckpointError(f"{path}: does not fit torchvision model {model_name!r}: {error}") from error
        self.backbone = self._trunk(model)
        self._build_head(dim, trainable, position, augment, crop_mode)

    @staticmethod
    def _trunk(model: nn.Module) -> nn.Sequential:
        """The model up to its last feature map: ``features`` where it has one (ConvNeXt,
        EfficientNet, MobileNet, VGG), else every child before the pooling and classifier."""
        if isinstance(getattr(model, "features", None), nn.Sequential):
            return model.features
        head_names = {"avgpool", "fc", "classifier", "head", "dropout"}
        return nn.Sequential(OrderedDict((name, child) for name, child in model.named_children() if name not in head_names))

    def backbone_features(self, images):
        features = self.backbone(images)  # (B, C, rows, cols)
        rows, cols = features.shape[-2:]
        return features.flatten(2).transpose(1, 2), (rows, cols)

    def parameter_groups(self):
        groups = [[f"{name}.{p}" for p, _ in child.named_parameters()] for name, child in self.backbone.named_children()]
        return [group for group in groups if group]

    def data_config(self):
        try:
            preset = torchvision.models.get_model_weights(self.model_name).DEFAULT.transforms()
            crop, resize = preset.crop_size[0], preset.resize_size[0]
            config = dict(
                mean=tuple(preset.mean), std=tuple(preset.std), input_size=(3, crop, crop),
                interpolation=preset.interpolation.value, crop_pct=crop / resize, crop_mode="center",
            )
        except Exception:  # no registered weights: the ImageNet defaults most torchvision models use
            config = dict(
                mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(3, 224, 224),
                interpolation="bilinear", crop_pct=0.875, crop_mode="center",
            )
        if self.image_size:
            config["input_size"] = (3, self.image_size, self.image_size)
        return config
