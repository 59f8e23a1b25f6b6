"""Input handling shared by the evaluate modules in ``hf_distill/evaluate_modules``.

``evaluate.load`` copies each module script into its own cache and imports it there; the scripts import
this installed module instead of each carrying a copy.
"""

import datasets
import numpy as np
import pyarrow as pa

# Values per numpy block / Arrow write: bounds temporaries and keeps int32 list offsets in range.
_BLOCK_VALUES = 1 << 22


def _block_rows(width):
    return max(1, _BLOCK_VALUES // max(1, width))


def _arrow_tables_from_numpy(features, columns):
    """Arrow tables holding a batch of numpy arrays, or None when the batch needs evaluate's generic path.

    Scalar features take 1-D arrays, list-of-float features take 2-D arrays (one row per sample).
    Building the Arrow arrays straight from the numpy buffers skips the per-element Python conversion
    done by `EvaluationModule.add_batch`, which otherwise dominates for logits of shape (50_000, 1000).
    """
    if set(columns) != set(features) or not all(isinstance(v, np.ndarray) for v in columns.values()):
        return None
    for name, feature in features.items():
        value = columns[name]
        if isinstance(feature, datasets.Value):
            kinds = "iu" if feature.dtype.startswith(("int", "uint")) else "fiu"
            if value.ndim != 1 or value.dtype.kind not in kinds:
                return None
        elif isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.Value):
            if (
                value.ndim != 2
                or value.dtype.kind not in "fiu"
                or not feature.feature.dtype.startswith("float")
            ):
                return None
        else:
            return None
    lengths = {name: value.shape[0] for name, value in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"All inputs must have the same number of samples, got {lengths}")
    num_rows = next(iter(lengths.values()))
    width = max([value.shape[1] for value in columns.values() if value.ndim == 2] or [1])
    step = _block_rows(width)
    tables = []
    for start in range(0, num_rows, step):
        arrays = {}
        for name, feature in features.items():
            part = columns[name][start : start + step]
            if part.ndim == 1:
                arrays[name] = pa.array(np.ascontiguousarray(part, dtype=feature.dtype))
            else:
                values = np.ascontiguousarray(part, dtype=feature.feature.dtype).reshape(-1)
                offsets = np.arange(part.shape[0] + 1, dtype=np.int32) * part.shape[1]
                arrays[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        tables.append(pa.table(arrays))
    return tables


def _as_numpy(part, dtype, matrix):
    """One stretch of a column (Arrow array or numpy array) as numpy: 2-D when `matrix`, else 1-D."""
    if isinstance(part, pa.Array):
        if part.null_count:
            raise ValueError("inputs must not contain missing values")
        if not matrix:
            return part.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        lengths = part.value_lengths().to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if len(lengths) else 0
        if np.any(lengths != width):
            raise ValueError("every sample must have the same number of class scores")
        values = part.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        return values.reshape(len(part), width)
    return part


def row_blocks(*specs):
    """Walk columns given as `(column, dtype, matrix)` together, yielding tuples of numpy blocks.

    Columns may be Arrow (what `compute` passes, possibly chunked) or anything numpy accepts. Blocks
    follow the Arrow chunk boundaries, so stored data is read without one large concatenated copy.
    """
    columns = []
    for column, dtype, matrix in specs:
        if not isinstance(column, (pa.Array, pa.ChunkedArray)):
            column = np.asarray(column, dtype=dtype)
            if column.ndim != (2 if matrix else 1):
                shape = "(num_samples, num_classes)" if matrix else "(num_samples,)"
                raise ValueError(f"expected an input of shape {shape}, got shape {column.shape}")
        columns.append((column, dtype, matrix))
    num_rows = {len(column) for column, _, _ in columns}
    if len(num_rows) != 1:
        raise ValueError(f"All inputs must have the same number of samples, got {sorted(num_rows)}")
    num_rows = num_rows.pop()
    bounds = {0, num_rows}
    for column, _, _ in columns:
        if isinstance(column, pa.ChunkedArray):
            bounds.update(np.cumsum([len(chunk) for chunk in column.chunks]).tolist())
        elif isinstance(column, np.ndarray):
            bounds.update(range(0, num_rows, _block_rows(column.shape[1] if column.ndim == 2 else 1)))
    bounds = sorted(bounds)
    widths = [None] * len(columns)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block = []
        for index, (column, dtype, matrix) in enumerate(columns):
            part = (
                column.slice(start, stop - start)
                if not isinstance(column, np.ndarray)
                else column[start:stop]
            )
            if isinstance(part, pa.ChunkedArray):
                part = part.chunk(0) if part.num_chunks == 1 else part.combine_chunks()
            part = _as_numpy(part, dtype, matrix)
            if matrix:
                if widths[index] is not None and part.shape[1] != widths[index]:
                    raise ValueError("every sample must have the same number of class scores")
                widths[index] = part.shape[1]
            block.append(part)
        yield tuple(block)


class NumpyBatchMixin:
    """Stores 2-D/1-D numpy batches through Arrow directly; any other input goes through evaluate as usual."""

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references to the module's store."""
        columns = {"predictions": predictions, "references": references}
        tables = None if kwargs else _arrow_tables_from_numpy(self.features, columns)
        if tables is None:
            return super().add_batch(predictions=predictions, references=references, **kwargs)
        if self.writer is None:
            self.selected_feature_format = self.features
            self._init_writer()
        for table in tables:
            self.writer.write_table(table)


def arrow_format(info):
    # Stored columns reach `_compute` as Arrow arrays (read zero-copy into numpy) instead of nested Python
    # lists. Set after construction because MetricInfo's own check only anticipates the "numpy" format.
    info.format = "arrow"
    return info
