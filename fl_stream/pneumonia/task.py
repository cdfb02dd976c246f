"""Training and evaluation loops shared by the federated clients and the centralized trainer."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from fl_stream.pneumonia.metrics import classification_metrics

__all__ = ["evaluate", "pick_device", "train_epoch"]


def pick_device() -> torch.device:
    """Return CUDA when a GPU is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> dict[str, float]:
    """Train ``model`` for one epoch over ``loader``; return the epoch's metrics.

    The metrics describe the predictions made while training (the model changes during the
    epoch), as is usual for a training curve.
    """
    model.to(device).train()
    criterion = torch.nn.CrossEntropyLoss()
    return _run(model, loader, device, criterion, optimizer)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Evaluate ``model`` on ``loader``; return loss, accuracy, precision, recall, f1, auroc."""
    model.to(device).eval()
    return _run(model, loader, device, torch.nn.CrossEntropyLoss(), optimizer=None)


def _run(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
) -> dict[str, float]:
    total_loss, count = 0.0, 0
    labels, probabilities = [], []
    for images, targets in loader:
        if optimizer is not None and len(targets) == 1:
            continue  # BatchNorm cannot normalise a batch of one example in training mode
        images, targets = images.to(device), targets.to(device)
        logits = model(images)
        loss = criterion(logits, targets)
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        total_loss += loss.item() * len(targets)
        count += len(targets)
        labels.append(targets.cpu())
        probabilities.append(torch.softmax(logits.detach(), dim=1)[:, 1].cpu())
    if count == 0:
        raise ValueError("cannot train or evaluate on an empty data loader")
    return classification_metrics(
        torch.cat(labels).numpy(), torch.cat(probabilities).numpy(), total_loss / count
    )
