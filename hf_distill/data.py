"""Datasets: the embedded default (scikit-learn's digits) and checks on user datasets."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from torch import Tensor

DIGITS_DATASET_ID = "sklearn/digits"


def digits_dataset(seed: int = 0, test_size: float = 0.3) -> DatasetDict:
    """scikit-learn's 1797 handwritten digits (8x8, 10 classes) as a ``DatasetDict`` with a stratified
    "train"/"test" split; columns ``image`` (PIL RGB) and ``label`` (``ClassLabel`` named '0'..'9').

    It ships with scikit-learn, so it works offline; it is the default for tests, the demo and the
    quality benchmarks.
    """
    from sklearn.datasets import load_digits

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    digits = load_digits()
    # 0..16 intensities -> 0..255 grey, replicated to RGB like any photo dataset.
    grey = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = [PILImage.fromarray(img, mode="L").convert("RGB") for img in grey]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    ds = Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    return ds.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")


def per_class_subset(dataset: Dataset, per_class: int, seed: int = 0, label_column: str = "label") -> Dataset:
    """A stratified few-shot subset: ``per_class`` images of every class, drawn without replacement by ``seed``
    (the rows are shuffled with it, then the first ``per_class`` of each class are kept, in shuffled order).

    Raises when a class has fewer than ``per_class`` images, naming the class and its count."""
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"train_samples_per_class must be a positive integer, got {per_class!r}")
    if label_column not in dataset.column_names:
        raise ValueError(
            f"train_samples_per_class needs labels, but label_column_name='{label_column}' is not a column of the "
            f"training data (columns: {dataset.column_names})"
        )
    labels = np.asarray(dataset[label_column])
    order = np.random.default_rng(seed).permutation(len(labels))
    counts = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
    short = {c: n for c, n in counts.items() if n < per_class}
    if short:
        raise ValueError(
            f"train_samples_per_class={per_class}: classes {sorted(short)} have only {sorted(short.values())} "
            "training images; lower train_samples_per_class"
        )
    taken: dict[int, int] = {}
    keep = []
    for index in order:
        label = int(labels[index])
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            keep.append(int(index))
    return dataset.select(keep)


def class_names(dataset: Dataset, label_column: str = "label") -> list[str]:
    """Class names from a dataset's ``ClassLabel`` column; a clear error when there is none."""
    if label_column not in dataset.column_names:
        raise ValueError(
            f"label_column_name='{label_column}' is not a column of the dataset (columns: {dataset.column_names}); "
            "set DistillationConfig.label_column_name to the column that holds the class ids"
        )
    feature = dataset.features[label_column]
    if not isinstance(feature, ClassLabel):
        raise ValueError(
            f"column '{label_column}' is {type(feature).__name__}, not a ClassLabel, so the class names are unknown; "
            f"cast it with dataset.cast_column('{label_column}', ClassLabel(names=[...])), or point "
            "DistillationConfig.label_column_name at the ClassLabel column"
        )
    return list(feature.names)


def train_labels_by_sample_id(dataset: Any, label_column: str = "label") -> Tensor | None:
    """The class label of every training sample as a ``(len(dataset),)`` long tensor indexed by sample id (the
    ``sample_id`` column when the dataset has one, else the row position), which CRD's exact negative
    sampling needs. ``None`` when there are none to give: no dataset, not a map-style ``datasets.Dataset``,
    no ``label_column``, or some sample unlabelled (label < 0)."""
    columns = getattr(dataset, "column_names", None)
    if columns is None or label_column not in columns or not hasattr(dataset, "__len__"):
        return None  # no dataset, no labels, or a stream (IterableDataset) that cannot be read up front
    labels = torch.as_tensor(list(dataset[label_column]), dtype=torch.long)
    if labels.dim() != 1 or bool((labels < 0).any()):
        return None
    if "sample_id" not in columns:
        return labels
    ids = torch.as_tensor(list(dataset["sample_id"]), dtype=torch.long)
    if ids.numel() and (
        int(ids.min()) < 0 or int(ids.max()) >= len(labels) or torch.unique(ids).numel() != ids.numel()
    ):
        return None  # ids that do not index the memory bank; the CRD module refuses them itself
    by_id = torch.empty_like(labels)
    by_id[ids] = labels
    return by_id


class StreamSampleIds:
    """``IterableDataset.map(StreamSampleIds(rank, world), with_indices=True)``: a ``sample_id`` for every
    streamed row, so the per-sample randomness of the views stays a function of (seed, epoch, sample).

    ``datasets`` counts ``with_indices`` per iteration of the part of the stream one reader iterates: it
    restarts at 0 in every epoch, and in every DataLoader worker and every process that reads its own shards
    (Accelerate's ``dispatch_batches=False``). The id is that running index combined with the reader's
    position (worker of ``num_workers``, process of ``world_size``), so no two rows of one epoch share an id
    and a resumed run, which re-reads the epoch's stream in the same order, sees the same ids. For a shuffled
    stream the id is the row's place in that epoch's order, which ``set_epoch`` makes a function of
    (seed, epoch) too.
    """

    def __init__(self, process_index: int = 0, world_size: int = 1):
        self.process_index = int(process_index)
        self.world_size = max(1, int(world_size))

    def __call__(self, row: dict[str, Any], index: int) -> dict[str, int]:
        from torch.utils.data import get_worker_info

        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        reader = worker_id * self.world_size + self.process_index
        return {"sample_id": int(index) * num_workers * self.world_size + reader}


def with_stream_sample_ids(dataset: Any, process_index: int = 0, world_size: int = 1) -> Any:
    """``dataset`` (a ``datasets.IterableDataset``) with a ``sample_id`` column (:class:`StreamSampleIds`);
    one that already has the column is returned as it is."""
    from datasets import Value

    columns = dataset.column_names or []
    if "sample_id" in columns:
        return dataset
    features = None
    if dataset.features is not None:
        features = Features({**dataset.features, "sample_id": Value("int64")})
    return dataset.map(StreamSampleIds(process_index, world_size), with_indices=True, features=features)
