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
