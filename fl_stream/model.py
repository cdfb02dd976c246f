"""The classifier: a torchvision ResNet with a one-channel stem and a two-class head."""

from __future__ import annotations

import torch
from torchvision import models

__all__ = ["MODELS", "build_model"]

MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def build_model(name: str = "resnet18", num_classes: int = 2) -> torch.nn.Module:
    """Return a randomly initialised ResNet ``name`` for grayscale images.

    No pretrained weights are used, so nothing is downloaded. The stem convolution takes one
    input channel instead of three; the rest of the architecture is torchvision's.

    Raises:
        ValueError: ``name`` is not one of :data:`MODELS`.
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    model = getattr(models, name)(weights=None, num_classes=num_classes)
    stem = model.conv1
    model.conv1 = torch.nn.Conv2d(
        1, stem.out_channels, kernel_size=stem.kernel_size, stride=stem.stride,
        padding=stem.padding, bias=False,
    )
    return model
