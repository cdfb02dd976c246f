"""Chest X-ray pneumonia data: a synthetic set, PneumoniaMNIST, the chest_xray folder tree.

Every source yields the same thing, a :class:`DataSplits` of ``TensorDataset`` objects holding
``(images float32 N x 1 x H x W in [0, 1], labels int64)`` with label 0 = normal and
1 = pneumonia. :func:`load_splits` picks the source from ``data_path``:

- ``None`` or ``""``: a synthetic set generated deterministically from ``seed`` (no files).
- a ``.npz`` file: MedMNIST's PneumoniaMNIST (``train_images``, ``train_labels``,
  ``val_*``, ``test_*``).
- a directory: the public chest X-ray collection's layout, ``train/NORMAL``,
  ``train/PNEUMONIA``, ``test/NORMAL``, ``test/PNEUMONIA`` and optionally ``val/...``;
  without ``val/`` a stratified validation split is carved from ``train/``.

:func:`client_datasets` splits the training set across federated clients with flwr-datasets
partitioners (IID or Dirichlet non-IID over the label) and caches the result per process, so
a simulation worker that serves many clients and rounds loads the data once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

__all__ = [
    "CLASS_NAMES",
    "PARTITIONINGS",
    "DataError",
    "DataSplits",
    "client_datasets",
    "load_splits",
    "partition_indices",
    "synthetic_splits",
]

CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # index = label; also the chest_xray folder names
PARTITIONINGS = ("iid", "dirichlet")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SYNTHETIC_SIZES = {"train": 1200, "val": 200, "test": 400}
VAL_FRACTION = 0.1  # share of train/ carved out as validation when a folder tree has no val/
CLIENT_EVAL_FRACTION = 0.2  # share of each client's partition it evaluates on
NPZ_KINDS = ("images", "labels")  # PneumoniaMNIST arrays: <split>_images, <split>_labels


class DataError(ValueError):
    """The data at ``data_path`` does not have the expected format or layout."""


@dataclass(frozen=True)
class DataSplits:
    """Train, validation and test sets of (image, label) pairs."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset


@functools.lru_cache(maxsize=4)
def load_splits(data_path: str | None, image_size: int = 28, seed: int = 0) -> DataSplits:
    """Load (or generate) the data set named by ``data_path``, resized to ``image_size``.

    Results are cached per process: repeated calls with the same arguments return the same
    object, so callers must not modify the tensors in place.

    Raises:
        FileNotFoundError: ``data_path`` does not exist.
        DataError: the file or folder does not have the expected keys or layout.
    """
    if image_size < 8:
        raise DataError(f"image_size must be at least 8 pixels, got {image_size}")
    if not data_path:
        return synthetic_splits(image_size, seed)
    path = Path(data_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data path {str(path)!r} does not exist; expected a PneumoniaMNIST .npz file, "
            "a chest_xray folder (train/NORMAL, train/PNEUMONIA, test/...), "
            "or an empty value for the synthetic set"
        )
    if path.is_dir():
        return _load_image_folder(path, image_size, seed)
    if path.suffix == ".npz":
        return _load_npz(path, image_size)
    raise DataError(
        f"data path {str(path)!r} is neither a .npz file nor a folder; expected a "
        "PneumoniaMNIST .npz file or a chest_xray folder (train/NORMAL, train/PNEUMONIA, ...)"
    )


# --------------------------------------------------------------------------- synthetic


def synthetic_splits(
    image_size: int = 28, seed: int = 0, sizes: dict[str, int] | None = None
) -> DataSplits:
    """Generate chest-X-ray-like images: two lungs, ribs, heart; pneumonia adds opacities.

    Each split draws from its own child of ``seed``, so changing one split's size leaves the
    others unchanged. Classes are balanced.
    """
    sizes = {**SYNTHETIC_SIZES, **(sizes or {})}
    children = np.random.SeedSequence(seed).spawn(len(sizes))
    splits = {
        name: _synthetic_set(sizes[name], image_size, np.random.default_rng(child))
        for name, child in zip(("train", "val", "test"), children, strict=True)
    }
    return DataSplits(**splits)


def _synthetic_set(count: int, size: int, rng: np.random.Generator) -> TensorDataset:
    labels = rng.permutation(np.arange(count) % 2)
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    images = np.empty((count, size, size), dtype=np.float32)
    for i, label in enumerate(labels):
        images[i] = _synthetic_image(x, y, bool(label), rng)
    return _to_dataset(images, labels)


def _synthetic_image(
    x: np.ndarray, y: np.ndarray, pneumonia: bool, rng: np.random.Generator
) -> np.ndarray:
    dx, dy = rng.normal(0.0, 0.05, size=2)  # patient position
    x, y = x - dx, y - dy
    body = _ellipse(x, y, 0.0, 0.05, 0.9, 1.1)
    image = 0.08 + 0.32 * body
    lungs = np.zeros_like(x)
    for side in (-1.0, 1.0):
        cx = side * rng.normal(0.4, 0.03)
        lungs = np.maximum(lungs, _ellipse(x, y, cx, -0.05, rng.normal(0.27, 0.02), 0.6))
    image -= 0.2 * lungs  # air-filled lungs look dark
    ribs = np.sin(y * rng.uniform(14.0, 18.0) + rng.uniform(0, np.pi) + 2.0 * x**2) > 0.7
    image += 0.06 * ribs * lungs
    image += 0.28 * _ellipse(x, y, -0.08, 0.3, 0.2, 0.32)  # heart and mediastinum
    # Both classes carry faint blobs so that "any bright spot" is not the whole story.
    blobs = rng.integers(1, 4) if pneumonia else rng.integers(0, 2)
    for _ in range(blobs):
        side = rng.choice((-1.0, 1.0))
        cx, cy = side * rng.normal(0.4, 0.08), rng.uniform(-0.4, 0.45)
        sigma = rng.uniform(0.1, 0.22) if pneumonia else rng.uniform(0.04, 0.08)
        strength = rng.uniform(0.18, 0.4) if pneumonia else rng.uniform(0.05, 0.12)
        image += strength * lungs * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    image = rng.uniform(0.85, 1.15) * image + rng.normal(0.0, 0.04, size=image.shape)
    return np.clip(image, 0.0, 1.0)


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    """A soft-edged filled ellipse, 1 inside and 0 outside."""
    radius = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    return np.clip((1.0 - radius) * 6.0, 0.0, 1.0)


# --------------------------------------------------------------------------- PneumoniaMNIST


def _load_npz(path: Path, image_size: int) -> DataSplits:
    expected = [f"{split}_{kind}" for split in ("train", "val", "test") for kind in NPZ_KINDS]
    try:
        archive = np.load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as a .npz archive ({exc})") from None
    with archive:
        missing = [key for key in expected if key not in archive.files]
        if missing:
            raise DataError(
                f"{path}: missing arrays {missing}; a PneumoniaMNIST .npz holds "
                f"{expected} (found {sorted(archive.files)})"
            )
        splits = {}
        for split in ("train", "val", "test"):
            images = archive[f"{split}_images"]
            labels = archive[f"{split}_labels"].reshape(-1)
            if images.ndim != 3 or len(images) != len(labels):
                raise DataError(
                    f"{path}: {split}_images must be N x H x W grayscale with one label each; "
                    f"got images {images.shape} and labels {labels.shape}"
                )
            _check_labels(labels, f"{path}: {split}_labels")
            scaled = images.astype(np.float32) / 255.0
            splits[split] = _to_dataset(_resize(scaled, image_size), labels)
    return DataSplits(**splits)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:] == (size, size):
        return images
    tensor = torch.from_numpy(images).unsqueeze(1)
    resized = torch.nn.functional.interpolate(
        tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.squeeze(1).clamp_(0.0, 1.0).numpy()


# --------------------------------------------------------------------------- chest_xray folder


def _load_image_folder(root: Path, image_size: int, seed: int) -> DataSplits:
    has_val = (root / "val").is_dir()
    files = {
        split: _list_images(root, split)
        for split in ("train", "val", "test")
        if split != "val" or has_val
    }
    loaded = {split: _read_images(found, image_size) for split, found in files.items()}
    if not has_val:
        images, labels = loaded["train"]
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)), test_size=VAL_FRACTION, stratify=labels, random_state=seed
        )
        loaded["train"] = images[train_idx], labels[train_idx]
        loaded["val"] = images[val_idx], labels[val_idx]
    return DataSplits(**{split: _to_dataset(*pair) for split, pair in loaded.items()})


def _list_images(root: Path, split: str) -> list[tuple[Path, int]]:
    """Every (image file, label) of one split; the error lists all missing class folders."""
    layout = (
        f"expected {root}/{{train,test}}/{{{','.join(CLASS_NAMES)}}}/*.jpeg|.jpg|.png "
        "(val/ optional)"
    )
    folders = [root / split / name for name in CLASS_NAMES]
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        raise DataError(f"missing folder {', '.join(missing)}; {layout}")
    found: list[tuple[Path, int]] = []
    for label, folder in enumerate(folders):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"no images in {folder}; {layout}")
        found.extend((path, label) for path in images)
    return found


def _read_images(found: list[tuple[Path, int]], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([_read_image(path, image_size) for path, _ in found])
    return images, np.asarray([label for _, label in found], dtype=np.int64)


def _read_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.draft("L", (size, size))  # JPEG: decode at reduced scale, much faster
            pixels = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return np.asarray(pixels, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------- shared helpers


def _check_labels(labels: np.ndarray, where: str) -> None:
    unexpected = sorted(set(np.unique(labels).tolist()) - {0, 1})
    if unexpected:
        raise DataError(f"{where}: labels must be 0 (normal) or 1 (pneumonia), found {unexpected}")


def _to_dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    return TensorDataset(
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1),
        torch.from_numpy(np.asarray(labels, dtype=np.int64)),
    )


# --------------------------------------------------------------------------- federated clients


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    partition_id: int,
    *,
    partitioning: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Return the indices of ``labels`` that belong to client ``partition_id``.

    ``"iid"`` shuffles (with ``seed``) and cuts equal shards; ``"dirichlet"`` draws each
    client's label mix from Dirichlet(``alpha``) (smaller alpha, more skew). Both use
    flwr-datasets partitioners on an in-memory table of (index, label), so the images never
    pass through Arrow. Deterministic for a given seed.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    if num_partitions > len(labels):
        raise DataError(f"cannot split {len(labels)} examples across {num_partitions} clients")
    table = Dataset.from_dict({"index": np.arange(len(labels)), "label": np.asarray(labels)})
    if partitioning == "iid":
        partitioner = IidPartitioner(num_partitions)
        table = table.shuffle(seed=seed)
    elif partitioning == "dirichlet":
        # flwr-datasets' default minimum of 10 per client cannot be met on small data sets.
        min_size = max(1, min(10, len(labels) // (4 * num_partitions)))
        partitioner = DirichletPartitioner(
            num_partitions, "label", alpha, min_partition_size=min_size, seed=seed
        )
    else:
        raise ValueError(f"partitioning must be one of {PARTITIONINGS}, got {partitioning!r}")
    partitioner.dataset = table
    try:
        partition = partitioner.load_partition(partition_id)
    except ValueError as exc:
        raise DataError(
            f"{partitioning} partitioning of {len(labels)} examples into {num_partitions} "
            f"clients failed ({exc}); use a larger dirichlet-alpha or fewer clients"
        ) from None
    return np.asarray(partition.with_format("numpy")["index"][:], dtype=np.int64)


@functools.lru_cache(maxsize=64)
def client_datasets(
    partition_id: int,
    num_partitions: int,
    *,
    data_path: str | None = None,
    image_size: int = 28,
    seed: int = 0,
    partitioning: str = "iid",
    alpha: float = 0.5,
    max_examples: int = 0,
) -> tuple[TensorDataset, TensorDataset]:
    """Return client ``partition_id``'s (train, eval) sets, cached per process.

    The client's partition of the training split is capped at ``max_examples`` (0 = no cap)
    and then split into train and eval parts (``CLIENT_EVAL_FRACTION`` for eval, stratified
    when both classes are present).
    """
    splits = load_splits(data_path, image_size, seed)
    images, labels = splits.train.tensors
    indices = partition_indices(
        labels.numpy(),
        num_partitions,
        partition_id,
        partitioning=partitioning,
        alpha=alpha,
        seed=seed,
    )
    if max_examples and len(indices) > max_examples:
        indices = indices[:max_examples]  # partitions are already shuffled
    if len(indices) < 2:
        raise DataError(
            f"client {partition_id} got {len(indices)} examples; use fewer clients, "
            "a larger dirichlet-alpha or more data"
        )
    part_labels = labels[indices].numpy()
    stratify = part_labels if np.bincount(part_labels, minlength=2).min() >= 2 else None
    train_idx, eval_idx = train_test_split(
        indices, test_size=CLIENT_EVAL_FRACTION, stratify=stratify, random_state=seed
    )
    return (
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[eval_idx], labels[eval_idx]),
    )
