"""Training and evaluation loops shared by the federated clients and the centralized trainer."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Protocol

import torch

from fl_stream.pneumonia.metrics import classification_metrics

__all__ = [
    "BatchCallback",
    "Batches",
    "Penalty",
    "evaluate",
    "pick_device",
    "proximal_term",
    "train_epoch",
]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
"""(images, labels) batches: a DataLoader, or one wrapped in a progress bar."""
Penalty = Callable[[], torch.Tensor]
"""A term added to each training batch's loss (e.g. FedProx's proximal term)."""


class BatchCallback(Protocol):
    """Called after each batch, e.g. ``ProgressReporter.batch_done``.

    ``batch`` counts the batches done (from 1, up to ``num_batches``, the loader's length),
    ``examples`` is this batch's (0 for a batch skipped) and ``loss`` the running mean loss.
    """

    def __call__(self, batch: int, num_batches: int, examples: int, *, loss: float) -> None: ...


def pick_device() -> torch.device:
    """Return CUDA when a GPU is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def proximal_term(model: torch.nn.Module, mu: float) -> Penalty:
    """FedProx's ``mu / 2 * ||w - w_global||^2``, ``w_global`` being ``model``'s weights now.

    Move ``model`` to its device first: the global weights are copied where they are.
    """
    global_weights = [p.detach().clone() for p in model.parameters()]

    def penalty() -> torch.Tensor:
        pairs = zip(model.parameters(), global_weights, strict=True)
        return mu / 2 * torch.stack([((p - g) ** 2).sum() for p, g in pairs]).sum()

    return penalty


def train_epoch(
    model: torch.nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    penalty: Penalty | None = None,
    on_batch: BatchCallback | None = None,
) -> dict[str, float]:
    """Train ``model`` for one epoch over ``loader``; return the epoch's metrics.

    The metrics describe the predictions made while training (the model changes during the
    epoch), as is usual for a training curve. ``penalty`` is added to each batch's loss for
    the gradient step; the reported loss is the data loss alone. ``on_batch`` is called
    after each batch.
    """
    model.to(device).train()
    criterion = torch.nn.CrossEntropyLoss()
    return _run(model, loader, device, criterion, optimizer, penalty, on_batch)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Batches,
    device: torch.device,
    on_batch: BatchCallback | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` on ``loader``; return loss, accuracy, precision, recall, f1, auroc.

    ``on_batch`` is called after each batch.
    """
    model.to(device).eval()
    criterion = torch.nn.CrossEntropyLoss()
    return _run(model, loader, device, criterion, optimizer=None, on_batch=on_batch)


def _run(
    model: torch.nn.Module,
    loader: Batches,
    device: torch.device,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    penalty: Penalty | None = None,
    on_batch: BatchCallback | None = None,
) -> dict[str, float]:
    total_loss, count = 0.0, 0
    labels, probabilities = [], []
    num_batches = operator.length_hint(loader)
    for batch, (images, targets) in enumerate(loader, start=1):
        # BatchNorm cannot normalise a batch of one example in training mode: skip it.
        examples = 0 if optimizer is not None and len(targets) == 1 else len(targets)
        if examples:
            images, targets = images.to(device), targets.to(device)
            logits = model(images)
            loss = criterion(logits, targets)
            if optimizer is not None:
                optimizer.zero_grad()
                (loss + penalty() if penalty is not None else loss).backward()
                optimizer.step()
            total_loss += loss.item() * examples
            count += examples
            labels.append(targets.cpu())
            probabilities.append(torch.softmax(logits.detach(), dim=1)[:, 1].cpu())
        if on_batch is not None and count:
            on_batch(batch, num_batches, examples, loss=total_loss / count)
    if count == 0:
        raise ValueError("cannot train or evaluate on an empty data loader")
    return classification_metrics(
        torch.cat(labels).numpy(), torch.cat(probabilities).numpy(), total_loss / count
    )
