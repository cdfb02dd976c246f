"""Data loaders (synthetic, PneumoniaMNIST .npz, chest_xray folder) and client partitioning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fl_stream.pneumonia.data import (
    DataError,
    client_datasets,
    load_splits,
    partition_indices,
    synthetic_splits,
)


def test_synthetic_is_deterministic_balanced_and_in_range():
    first = synthetic_splits(image_size=28, seed=3, sizes={"train": 40, "val": 10, "test": 20})
    again = synthetic_splits(image_size=28, seed=3, sizes={"train": 40, "val": 10, "test": 20})
    other = synthetic_splits(image_size=28, seed=4, sizes={"train": 40, "val": 10, "test": 20})
    images, labels = first.train.tensors
    assert images.shape == (40, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.bincount().tolist() == [20, 20]
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert torch.equal(images, again.train.tensors[0])
    assert not torch.equal(images, other.train.tensors[0])
    assert len(first.val) == 10 and len(first.test) == 20


def test_synthetic_pneumonia_images_carry_opacities():
    images, labels = synthetic_splits(sizes={"train": 200}).train.tensors
    lungs = images[:, 0, 6:22, 3:25]  # the lung fields of a 28 x 28 image
    assert lungs[labels == 1].mean() > lungs[labels == 0].mean() + 0.02


def test_synthetic_other_image_size():
    splits = load_splits(None, image_size=40, seed=0)
    assert splits.test.tensors[0].shape[1:] == (1, 40, 40)


def _write_npz(path, size=28, counts=(12, 4, 6), **overrides):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2).reshape(-1, 1).astype(np.uint8)
    arrays.update(overrides)
    np.savez(path, **arrays)
    return arrays


def test_npz_loader_reads_scales_and_resizes(tmp_path):
    path = tmp_path / "pneumoniamnist.npz"
    arrays = _write_npz(path)
    splits = load_splits(str(path), image_size=28)
    images, labels = splits.train.tensors
    assert images.shape == (12, 1, 28, 28)
    assert torch.allclose(images[0, 0], torch.from_numpy(arrays["train_images"][0] / 255.0).float())
    assert labels.tolist() == arrays["train_labels"].reshape(-1).tolist()
    assert (len(splits.val), len(splits.test)) == (4, 6)
    resized = load_splits(str(path), image_size=16)
    assert resized.test.tensors[0].shape == (6, 1, 16, 16)


def test_npz_missing_keys_are_named(tmp_path):
    path = tmp_path / "broken.npz"
    np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros(2))
    with pytest.raises(DataError, match=r"missing arrays \['val_images'"):
        load_splits(str(path))


def test_npz_bad_labels_are_refused(tmp_path):
    path = tmp_path / "labels.npz"
    _write_npz(path, train_labels=np.full((12, 1), 7, np.uint8))
    with pytest.raises(DataError, match="labels must be 0 .* or 1"):
        load_splits(str(path))


def _write_folder(root, splits=("train", "test"), per_class=6):
    rng = np.random.default_rng(1)
    for split in splits:
        for name in ("NORMAL", "PNEUMONIA"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (50, 60), dtype=np.uint8)  # not square, not 28
                Image.fromarray(pixels).save(folder / f"{name.lower()}-{i}.jpeg")


def test_image_folder_loader_carves_a_stratified_val_split(tmp_path):
    _write_folder(tmp_path, per_class=10)
    splits = load_splits(str(tmp_path), image_size=28, seed=0)
    assert splits.train.tensors[0].shape[1:] == (1, 28, 28)
    assert len(splits.train) + len(splits.val) == 20 and len(splits.test) == 20
    assert sorted(splits.val.tensors[1].tolist()) == [0, 1]  # 10 % of 20, one of each class
    again = load_splits(str(tmp_path), image_size=24, seed=0)  # a fresh (uncached) load
    assert torch.equal(splits.val.tensors[1], again.val.tensors[1])


def test_image_folder_uses_val_when_present(tmp_path):
    _write_folder(tmp_path, splits=("train", "val", "test"), per_class=3)
    splits = load_splits(str(tmp_path))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 6, 6)


def test_image_folder_wrong_layout_names_what_is_expected(tmp_path):
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    expected = r"missing folder .*train/PNEUMONIA; expected .*NORMAL,PNEUMONIA"
    with pytest.raises(DataError, match=expected):
        load_splits(str(tmp_path))


def test_missing_path_and_wrong_file_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; expected a PneumoniaMNIST"):
        load_splits(str(tmp_path / "nowhere.npz"))
    text = tmp_path / "data.csv"
    text.write_text("a,b\n")
    with pytest.raises(DataError, match="neither a .npz file nor a folder"):
        load_splits(str(text))


@pytest.mark.parametrize("partitioning", ["iid", "dirichlet"])
def test_partitions_cover_the_data_once_and_repeat_per_seed(partitioning):
    labels = np.arange(300) % 2
    parts = [
        partition_indices(labels, 3, i, partitioning=partitioning, alpha=0.5, seed=7)
        for i in range(3)
    ]
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(300))
    again = partition_indices(labels, 3, 1, partitioning=partitioning, alpha=0.5, seed=7)
    assert np.array_equal(again, parts[1])
    other = partition_indices(labels, 3, 1, partitioning=partitioning, alpha=0.5, seed=8)
    assert not np.array_equal(other, parts[1])


def test_dirichlet_small_alpha_skews_labels():
    labels = np.arange(600) % 2
    shares = [
        labels[partition_indices(labels, 4, i, partitioning="dirichlet", alpha=0.1, seed=0)].mean()
        for i in range(4)
    ]
    assert max(shares) - min(shares) > 0.5  # IID would keep every share near 0.5


def test_partitioning_errors():
    with pytest.raises(ValueError, match="partitioning must be one of"):
        partition_indices(np.zeros(10), 2, 0, partitioning="shards")
    with pytest.raises(ValueError, match=r"partition_id must be in \[0, 2\)"):
        partition_indices(np.zeros(10), 2, 2)


def test_client_datasets_cap_split_and_cache():
    train, held_out = client_datasets(1, 2, max_examples=50, seed=0)
    assert (len(train), len(held_out)) == (40, 10)
    assert client_datasets(1, 2, max_examples=50, seed=0)[0] is train  # cached per process
    other_train, _ = client_datasets(0, 2, max_examples=50, seed=0)
    mine = {tuple(x.flatten()[:50].tolist()) for x in train.tensors[0]}
    theirs = {tuple(x.flatten()[:50].tolist()) for x in other_train.tensors[0]}
    assert not mine & theirs  # clients never share an image
