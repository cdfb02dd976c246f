"""The classifier: a torchvision ResNet with a one-channel stem and a two-class head."""

from __future__ import annotations

import functools

import torch
from torchvision import models

__all__ = ["MODELS", "build_model"]

MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# A federated client trains only a handful of batches per round; BatchNorm's running
# statistics (used at evaluation) must follow the weights within those few steps, which
# PyTorch's default momentum of 0.1 does not: the global model would evaluate near chance
# for the first rounds while its training accuracy already rises.
BN_MOMENTUM = 0.3


def build_model(name: str = "resnet18", num_classes: int = 2) -> torch.nn.Module:
    """Return a randomly initialised ResNet ``name`` for grayscale images.

    No pretrained weights are used, so nothing is downloaded. The stem convolution takes one
    input channel instead of three and BatchNorm uses :data:`BN_MOMENTUM`; the rest of the
    architecture is torchvision's.

    Raises:
        ValueError: ``name`` is not one of :data:`MODELS`.
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    norm_layer = functools.partial(torch.nn.BatchNorm2d, momentum=BN_MOMENTUM)
    model = getattr(models, name)(weights=None, num_classes=num_classes, norm_layer=norm_layer)
    stem = model.conv1
    model.conv1 = torch.nn.Conv2d(
        1,
        stem.out_channels,
        kernel_size=stem.kernel_size,
        stride=stem.stride,
        padding=stem.padding,
        bias=False,
    )
    return model
