"""Top-k accuracy computed from per-class scores (logits or probabilities)."""

import datasets
import evaluate
import numpy as np

from hf_distill.metric_io import NumpyBatchMixin, arrow_format, row_blocks

_DESCRIPTION = """
Top-k accuracy: the fraction of samples whose true class is among the k highest-scoring classes.

Classes are ranked by the per-class scores of each sample (stored as float32). Equal scores are
ordered by class index, lower index first, the convention of `numpy.argmax`: `top1_accuracy` equals
`mean(argmax(predictions, axis=1) == references)` exactly, ties included. A `k` larger than the number
of classes is clipped to it (that accuracy is then 1.0); the result key keeps the requested k.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, or an array of shape (num_samples, num_classes)):
        Per-class scores of every sample, e.g. the logits of a classifier.
    references (`list` of `int`, or an integer array of shape (num_samples,)):
        The true class index of every sample.
    k (`list` of `int`, *optional*, defaults to `[1, 5]`): The values of k to report, each >= 1.
Returns:
    `top{k}_accuracy` (`float` in [0, 1]) for every requested k.
Examples:
    >>> metric = evaluate.load("path/to/top_k_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]], references=[2, 0], k=[1, 2])
    {'top1_accuracy': 0.5, 'top2_accuracy': 1.0}
"""

_CITATION = """
@article{russakovsky2015imagenet,
  title   = {{ImageNet} Large Scale Visual Recognition Challenge},
  author  = {Russakovsky, Olga and Deng, Jia and Su, Hao and Krause, Jonathan and Satheesh, Sanjeev and
             Ma, Sean and Huang, Zhiheng and Karpathy, Andrej and Khosla, Aditya and Bernstein, Michael and
             Berg, Alexander C. and Fei-Fei, Li},
  journal = {International Journal of Computer Vision},
  volume  = {115},
  number  = {3},
  pages   = {211--252},
  year    = {2015}
}
"""


def label_ranks(scores, labels):
    """0-based position of each sample's true class when its scores are sorted in decreasing order.

    Ties are broken by class index (lower first): the rank is the number of classes scoring strictly
    higher plus the number of lower-indexed classes with exactly the same score.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = scores.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"references must be class indices in [0, {num_classes}), "
            f"got values in [{labels.min()}, {labels.max()}]"
        )
    own = np.take_along_axis(scores, labels[:, None], axis=1)
    ahead = (scores > own) | ((scores == own) & (np.arange(num_classes)[None, :] < labels[:, None]))
    return np.count_nonzero(ahead, axis=1)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(NumpyBatchMixin, evaluate.Metric):
    def _info(self):
        return arrow_format(
            evaluate.MetricInfo(
                description=_DESCRIPTION,
                citation=_CITATION,
                inputs_description=_KWARGS_DESCRIPTION,
                features=datasets.Features(
                    {
                        "predictions": datasets.List(datasets.Value("float32")),
                        "references": datasets.Value("int64"),
                    }
                ),
                reference_urls=["https://doi.org/10.1007/s11263-015-0816-y"],
            )
        )

    def _compute(self, predictions, references, k=(1, 5)):
        ks = [k] if isinstance(k, (int, np.integer)) else list(k)
        if not ks:
            raise ValueError("k must contain at least one value")
        for value in ks:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"every k must be an integer >= 1, got {value!r}")
        ks = [int(value) for value in ks]
        hits = dict.fromkeys(ks, 0)
        total = 0
        num_classes = None
        for scores, labels in row_blocks((predictions, np.float32, True), (references, np.int64, False)):
            num_classes = scores.shape[1]
            if num_classes == 0:
                raise ValueError("predictions must hold at least one class score per sample")
            ranks = label_ranks(scores, labels)
            for value in ks:
                hits[value] += int(np.count_nonzero(ranks < min(value, num_classes)))
            total += len(labels)
        if total == 0:
            raise ValueError("top_k_accuracy needs at least one sample")
        return {f"top{value}_accuracy": hits[value] / total for value in ks}
