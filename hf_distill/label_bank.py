"""Teacher label bank: R recorded augmented views per training image and the teacher's output on each.

A big teacher runs once, over ``num_records`` (R) views of every training image; training then replays
those views and never loads the teacher (FKD, Shen & Xing, ECCV 2022; with FunMatch's consistent, varied
views and mixup recorded as well).

Record ``r`` of a sample is the view the live collator would draw at epoch ``r`` with the bank's seed
(crop box in original pixels and flip, :meth:`DistillationCollator.view_params`). With FunMatch mixing a
record also names a partner sample, chosen from ``(seed, r, sample id)``, the partner's own view in record
``r``, and the mixing parameters (mixup weight ``lam``, or a CutMix box, from
:func:`hf_distill.mixing.sample_mix_params`). A replayed batch can therefore rebuild every mixed view from
its own row alone, whatever the batch it lands in.

Which record a sample replays in an epoch is a function of ``(seed, epoch, sample id)``
(:func:`replay_record`), so a resumed run replays the same records.

``label_bank_mix='replay'`` (FunMatch banks) records crops only and mixes at replay: in each epoch a sample
draws, from ``(seed, epoch, sample id)``, a partner, the partner's record and the mixing parameters
(:func:`replay_mix_record`); the student sees the two recorded crops mixed, and the target is the same mix
of the two recorded teacher distributions at ``temperature``, as FKD mixes its soft labels. R records then
give R² view pairs per image pair and any mixing weight, where a recorded-mix bank holds R fixed mixed views;
the price is that the target is the mix of the teacher's outputs, not its output on the mixed image.

Storage per record: the full logits in fp16 (``label_bank_topk=None``), or with ``k`` the k largest logits
(fp16), their class ids and a *tail logit* (fp32). The tail logit is ``hf_distill.teacher_cache``'s: with
top-k probabilities ``p_i = softmax(z / T)_i`` and tail mass ``m = 1 - sum_topk p_i``, every other class
gets the logit ``T * log(m * S / ((1 - m) * (C - k)))`` where ``S = sum_topk exp(z_i / T)``; then
``softmax(reconstructed / T)`` keeps the top-k probabilities exactly and gives each of the ``C - k`` other
classes ``m / (C - k)``. For ``k = C`` it is the full logits.

On disk the bank is a ``datasets.Dataset`` (``save_to_disk``, sharded Arrow) with one row per record and
``label_bank.json`` beside it holding the fingerprint (also in the dataset's ``info.description``).
:func:`push_label_bank` uploads that directory to a Hub dataset repo, and ``teacher_label_bank=org/bank``
loads it back from there. Generation writes one finished shard at a time under ``shards/`` and
skips finished shards when restarted, so a killed run continues with no duplicate or missing record.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import teacher_cache
from .batch import BANK_LOGITS, BANK_ROWS
from .collators import AugmentationConfig, DistillationCollator, ViewParams, render_view, sample_generator
from .contract import Provides
from .images import load_pixels, to_rgb
from .losses import ModelOutputs
from .mixing import MixConfig, MixParams, apply_mix, mix_config_of, sample_mix_params
from .release import _stage
from .teacher import TeacherSource
from .teacher_cache import _teacher_identity, teacher_sizes, topk_compress, topk_expand
from .version import __version__

logger = logging.getLogger(__name__)

# 2: views rendered from whole-pixel boxes by torch's kernel (render_view); a version-1 bank saw other pixels
BANK_FORMAT_VERSION = 2
# label_bank_mix: the bank records the mixed views ('recorded') or crops only, mixed at replay ('replay').
BANK_MIXES = ("recorded", "replay")
METADATA_NAME = "label_bank.json"
_PARTNER_STREAM, _REPLAY_STREAM, _REPLAY_MIX_STREAM = 3, 4, 5
# Modes whose teacher view a record can hold; fix/ic_ens averages many crops: the teacher cache's job.
BANK_TEACHER_INPUTS = (
    "fix/rs",
    "fix/cc",
    "ind/rc",
    "ind/ic",
    "same/rc",
    "same/ic",
    "same",
    "ind",
    "funmatch",
)
# Fingerprint fields a training run must agree with (the others describe the bank only).
CHECKED_FIELDS = (
    "version",
    "dataset",
    "num_samples",
    "teacher_input",
    "augmentation",
    "mixing",
    "label_names",
    "temperature",
    "teacher_sources",
    "teacher_ensemble_reduction",
)


# ------------------------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class ViewRecord:
    """One recorded teacher view: its box/flip and, for FunMatch mixing, the partner and mix parameters.

    ``cut_box`` is relative ``(y0, x0, y1, x1)`` as in :class:`hf_distill.mixing.MixParams`; ``lam`` is the
    sample's own weight (1 when ``mixed`` is False).
    """

    box: tuple[float, float, float, float]
    flip: bool = False
    partner_id: int = -1
    partner_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    partner_flip: bool = False
    mixed: bool = False
    cutmix: bool = False
    lam: float = 1.0
    cut_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


def replay_record(seed: int, epoch: int, sample_id: int, num_records: int) -> int:
    """Which of the R records ``sample_id`` replays in ``epoch``: a function of (seed, epoch, sample id)."""
    return int(sample_generator(seed, epoch, sample_id, _REPLAY_STREAM).integers(num_records))


def _mix_generator(seed: int, record: int, sample_id: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, record, sample_id, _PARTNER_STREAM]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def make_record(
    collator: DistillationCollator,
    mix_config: MixConfig | None,
    record: int,
    sample_id: int,
    size: tuple[int, int],
    partner: tuple[int, tuple[int, int]] | None = None,
) -> ViewRecord:
    """Record ``record`` of ``sample_id`` (image ``size`` = (width, height)): the teacher's view at epoch
    ``record`` of ``collator`` (whose seed is the bank's) and, with ``mix_config``, the mixing with
    ``partner`` = (partner sample id, its size)."""
    collator.set_epoch(record)
    student, teacher = collator.view_params(sample_id, *size)
    view = teacher if teacher is not None else student
    if mix_config is None or partner is None:
        return ViewRecord(tuple(view.box), view.flip)
    partner_id, partner_size = partner
    partner_student, partner_teacher = collator.view_params(partner_id, *partner_size)
    partner_view = partner_teacher if partner_teacher is not None else partner_student
    # A 2-sample 'pair' draw: the sample and its partner share one lam / box, exactly as apply_mix reads them.
    params = sample_mix_params(
        2, replace(mix_config, mode="pair"), _mix_generator(collator.seed, record, sample_id)
    )
    return ViewRecord(
        tuple(view.box),
        view.flip,
        partner_id,
        tuple(partner_view.box),
        partner_view.flip,
        bool(params.applied[0]),
        bool(params.use_cutmix[0]),
        float(params.lam[0]),
        tuple(float(v) for v in params.boxes[0]),
    )


def choose_partner(seed: int, record: int, sample_id: int, position: int, num_samples: int) -> int:
    """The dataset position of the mixing partner of ``sample_id`` (at ``position``) in ``record``: uniform
    over the other samples, from (seed, record, sample id)."""
    return _other_position(sample_generator(seed, record, sample_id, _PARTNER_STREAM), position, num_samples)


def _other_position(rng: np.random.Generator, position: int, num_samples: int) -> int:
    if num_samples < 2:
        return position
    other = int(rng.integers(num_samples - 1))
    return other + 1 if other >= position else other


def replay_mix_plan(
    seed: int, epoch: int, num_samples: int, num_records: int, mix_config: MixConfig, size: int
) -> tuple[np.ndarray, np.ndarray, MixParams, Tensor]:
    """``label_bank_mix='replay'``: every sample's mixing in ``epoch``, by dataset position: the partner's
    position (uniform over the other samples), the partner's record (uniform over the R), the mixing
    parameters (``MixParams`` of the N (sample, partner) pairs) and the sample's own weight on the
    ``size`` x ``size`` student view (the pasted area for CutMix). Drawn at once from (seed, epoch), so a
    sample's mixing does not depend on its batch or worker."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, _REPLAY_MIX_STREAM])))
    positions = np.arange(num_samples)
    partners = rng.integers(max(1, num_samples - 1), size=num_samples)
    partners = np.where(num_samples < 2, positions, partners + (partners >= positions))
    records = rng.integers(num_records, size=num_samples)
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    # a 2N 'pair' draw: pair i is (i, 2N-1-i); the first N entries hold one draw per sample
    drawn = sample_mix_params(2 * num_samples, replace(mix_config, mode="pair"), generator)
    params = MixParams(*(getattr(drawn, f.name)[:num_samples] for f in fields(MixParams)))
    lam = torch.where(params.applied, params.lam_at_resolution(size, size), torch.ones_like(params.lam))
    return partners, records, params, lam


def mix_distributions(own: Tensor, partner: Tensor, lam: Tensor, temperature: float) -> Tensor:
    """Logits whose softmax at ``temperature`` is ``lam * softmax(own / T) + (1 - lam) * softmax(partner / T)``
    (row-wise): the mixed teacher target of a replay-mixed view, in the form every KD term reads."""
    t = float(temperature)
    lam = lam.to(own.dtype).unsqueeze(-1)
    mixed = lam * torch.softmax(own / t, dim=-1) + (1 - lam) * torch.softmax(partner / t, dim=-1)
    return t * torch.log(mixed.clamp_min(torch.finfo(mixed.dtype).tiny))


def render_records(
    records: list[ViewRecord],
    images: list[Any],
    partner_images: list[Any | None],
    size: int,
    interpolation: str = "bilinear",
) -> Tensor:
    """The (mixed) uint8 views ``(B, 3, size, size)`` of ``records``: each own view, its partner's view,
    then :func:`hf_distill.mixing.apply_mix` with the recorded parameters."""
    own = torch.stack(
        [render_view(img, ViewParams(r.box, r.flip), size, interpolation) for img, r in zip(images, records)]
    )
    if not any(r.mixed for r in records):
        return own
    partners = torch.stack(
        [
            render_view(p, ViewParams(r.partner_box, r.partner_flip), size, interpolation)
            if r.mixed
            else own[i]
            for i, (p, r) in enumerate(zip(partner_images, records))
        ]
    )
    batch = len(records)
    params = MixParams(
        perm=torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]),
        lam=torch.tensor([r.lam for r in records] + [1.0] * batch, dtype=torch.float32),
        use_cutmix=torch.tensor([r.cutmix for r in records] + [False] * batch),
        boxes=torch.tensor([r.cut_box for r in records] + [(0.0,) * 4] * batch, dtype=torch.float32),
        applied=torch.tensor([r.mixed for r in records] + [False] * batch),
    )
    return apply_mix(params, torch.cat([own, partners]))[0][:batch]


# ------------------------------------------------------------------------------------------- fingerprint
def bank_fingerprint(
    *,
    dataset: Any,
    teacher_input: str,
    augmentation: AugmentationConfig,
    mix_config: MixConfig | None,
    label_names: list[str] | None,
    temperature: float | None,
    teacher_sources: list[str] | None,
    ensemble_reduction: str | None = None,
) -> dict[str, Any]:
    """The fields a training run compares against a bank (see :data:`CHECKED_FIELDS`)."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None:
        raise ValueError("a label bank needs a datasets.Dataset: its fingerprint identifies the images")
    return {
        "version": BANK_FORMAT_VERSION,
        "dataset": fingerprint,
        "num_samples": len(dataset),
        "teacher_input": teacher_input,
        "augmentation": {
            "crop": augmentation.crop,
            "crop_scale": [float(v) for v in augmentation.crop_scale],
            "crop_ratio": [float(v) for v in augmentation.crop_ratio],
            "crop_fraction": float(augmentation.crop_fraction),
            "hflip": float(augmentation.hflip),
        },
        "mixing": None
        if mix_config is None
        else {
            "mixup_alpha": float(mix_config.mixup_alpha),
            "cutmix_alpha": float(mix_config.cutmix_alpha),
            "cutmix_minmax": list(mix_config.cutmix_minmax) if mix_config.cutmix_minmax else None,
            "prob": float(mix_config.prob),
            "switch_prob": float(mix_config.switch_prob),
        },
        "label_names": list(label_names) if label_names is not None else None,
        # Only top-k banks depend on the temperature (the tail logit); None: any temperature replays.
        "temperature": temperature,
        "teacher_sources": list(teacher_sources) if teacher_sources is not None else None,
        # An ensemble's outputs depend on how its members are reduced (None: a single teacher).
        "teacher_ensemble_reduction": ensemble_reduction,
    }


def check_fingerprint(bank_meta: dict[str, Any], run: dict[str, Any], path: str) -> None:
    """Raise a ``ValueError`` naming the first field where the bank and the run differ."""
    for name in CHECKED_FIELDS:
        ours, theirs = run.get(name), bank_meta.get(name)
        if name == "teacher_sources" and (ours is None or theirs is None):
            continue  # a run that names no teacher cannot be compared on it
        if name == "temperature" and theirs is None:
            continue
        if name == "teacher_ensemble_reduction" and (ours is None or theirs is None):
            continue  # a single teacher, a run whose teachers are modules, or a bank that predates the field
        if ours != theirs:
            if isinstance(ours, dict) and isinstance(theirs, dict):  # name the sub-field that differs
                key = next(k for k in sorted({*ours, *theirs}) if ours.get(k) != theirs.get(k))
                name, ours, theirs = f"{name}.{key}", ours.get(key), theirs.get(key)
            raise ValueError(
                f"DistillationConfig.teacher_label_bank: the bank {path} was made with {name}={theirs!r} but this run "
                f"has {name}={ours!r}; regenerate the bank (recipes/label_bank.py) with this run's settings, or set "
                "teacher_label_bank_ignore_fingerprint=True to use it anyway"
            )


# ------------------------------------------------------------------------------------------------ storage
IN_MEMORY_BYTES = 2 * 2**30  # label_bank_in_memory=None: banks up to this size are read into memory
RECORD_COLUMNS = tuple(f.name for f in fields(ViewRecord))


class LabelBank:
    """A loaded bank: per-record view parameters and teacher outputs, indexed by (sample id, record).

    ``in_memory=True`` reads every column into memory once (fastest; about 128 bytes per record).
    ``in_memory=False`` keeps the Arrow files memory-mapped and reads each batch's rows when asked, holding
    only one position per image: banks larger than memory. It needs the generation order (rows sorted by
    image, records 0..R-1 within each image), which :func:`generate_label_bank` writes. ``None`` picks
    memory for banks up to 2 GiB.
    """

    def __init__(self, dataset: Any, meta: dict[str, Any], path: str = "", in_memory: bool | None = None):
        self.meta = dict(meta)
        self.path = path
        self.num_records = int(meta["num_records"])
        self.num_classes = int(meta["num_classes"])
        self.in_memory = dataset.data.nbytes <= IN_MEMORY_BYTES if in_memory is None else bool(in_memory)
        data = dataset.with_format("numpy")
        outputs = ["logits"] if "logits" in data.column_names else ["topk_values", "topk_indices", "tail"]
        if not self.in_memory:
            self._positions = self._ordered_positions(dataset)
            self._records = data.select_columns(list(RECORD_COLUMNS))
            self._outputs = data.select_columns(outputs)
            self._both = data.select_columns([*RECORD_COLUMNS, *outputs])
            self._length = len(dataset)
            return
        self.sample_ids = torch.as_tensor(np.asarray(data["sample_id"]), dtype=torch.long)
        record = torch.as_tensor(np.asarray(data["record"]), dtype=torch.long)
        self.index = torch.full((int(self.sample_ids.max()) + 1, self.num_records), -1, dtype=torch.long)
        self.index[self.sample_ids, record] = torch.arange(len(self.sample_ids))
        if bool((self.index[torch.unique(self.sample_ids)] < 0).any()):
            raise ValueError(
                f"label bank {path} is incomplete: some samples lack some of the {self.num_records} records"
            )
        self._index = self.index.numpy()
        self._length = len(self.sample_ids)
        # Records are read row by row in the collator: plain numpy rows are much cheaper than tensors there.
        self._columns = {name: np.asarray(data[name]) for name in RECORD_COLUMNS}
        stored = {name: np.asarray(data[name]) for name in outputs}
        self.logits = self._output_tensor("logits", stored)
        self.topk_values = self._output_tensor("topk_values", stored)
        self.topk_indices = self._output_tensor("topk_indices", stored)
        self.tail = self._output_tensor("tail", stored)

    @staticmethod
    def _output_tensor(name: str, columns: dict[str, np.ndarray]) -> Tensor | None:
        if name not in columns:
            return None
        value = torch.as_tensor(np.asarray(columns[name]))
        return value.long() if name == "topk_indices" else value

    def _ordered_positions(self, dataset: Any) -> np.ndarray:
        """sample id -> image position, checking (in slices, never the whole column at once) that row ``i``
        holds record ``i % R`` of image ``i // R``."""
        R = self.num_records
        length = len(dataset)
        fix = "set label_bank_in_memory=true (it indexes rows in any order)"
        if length % R:
            raise ValueError(
                f"label bank {self.path}: {length} rows are not a whole number of {R}-record images; {fix}"
            )
        firsts = np.empty(length // R, dtype=np.int64)
        offset = 0
        keys = dataset.select_columns(["sample_id", "record"]).with_format("numpy")
        for start in range(0, length, 1 << 20):
            batch = keys[start : start + (1 << 20)]
            ids, records = np.asarray(batch["sample_id"]), np.asarray(batch["record"])
            rows = np.arange(offset, offset + len(ids))
            starts = records == 0
            firsts[rows[starts] // R] = ids[starts]
            if not ((records == rows % R).all() and (ids == firsts[rows // R]).all()):
                raise ValueError(f"label bank {self.path}: rows are not in generation order; {fix}")
            offset += len(ids)
        positions = np.full(int(firsts.max()) + 1, -1, dtype=np.int64)
        positions[firsts] = np.arange(len(firsts))
        if (positions >= 0).sum() != len(firsts):
            raise ValueError(f"label bank {self.path}: an image appears twice; {fix}")
        return positions

    def __len__(self) -> int:
        return self._length

    def row(self, sample_id: int, record: int) -> int:
        """The bank row of (sample id, record)."""
        if self.in_memory:
            if not 0 <= sample_id < len(self._index) or self._index[sample_id, record] < 0:
                raise KeyError(f"sample id {sample_id} is not in the label bank {self.path}")
            return int(self._index[sample_id, record])
        if not 0 <= sample_id < len(self._positions) or self._positions[sample_id] < 0:
            raise KeyError(f"sample id {sample_id} is not in the label bank {self.path}")
        return int(self._positions[sample_id]) * self.num_records + record

    def record(self, row: int) -> ViewRecord:
        return self.records([row])[0]

    def lookup(self, rows: list[int]) -> tuple[list[ViewRecord], Tensor]:
        """The view records and the stored teacher logits (fp32) of bank ``rows``: what the replay collator
        needs, in one read of the Arrow files when the bank is not in memory."""
        if self.in_memory:
            return self.records(rows), self.teacher_logits(torch.tensor(rows, dtype=torch.long))
        both = self._both[list(rows)]
        return self.records(rows, both), self._expand(both)

    def records(self, rows: list[int], columns: dict[str, Any] | None = None) -> list[ViewRecord]:
        """The view records of bank ``rows`` (one read of the Arrow files per call when not in memory;
        ``columns``: those rows already read)."""
        if self.in_memory:
            columns, at = self._columns, list(rows)
        else:
            columns = columns if columns is not None else self._records[list(rows)]
            at = list(range(len(rows)))

        def one(i: int) -> ViewRecord:
            return ViewRecord(
                tuple(columns["box"][i].tolist()),
                bool(columns["flip"][i]),
                int(columns["partner_id"][i]),
                tuple(columns["partner_box"][i].tolist()),
                bool(columns["partner_flip"][i]),
                bool(columns["mixed"][i]),
                bool(columns["cutmix"][i]),
                float(columns["lam"][i]),
                tuple(columns["cut_box"][i].tolist()),
            )

        return [one(i) for i in at]

    def teacher_logits(self, rows: Tensor) -> Tensor:
        """The stored teacher logits ``(B, C)`` fp32 of bank ``rows``, on the rows' device."""
        index = rows.detach().long().cpu()
        if not self.in_memory:
            return self._expand(self._outputs[index.tolist()]).to(rows.device)
        columns = {"logits": self.logits, "topk_values": self.topk_values}
        columns.update(topk_indices=self.topk_indices, tail=self.tail)
        stored = {name: t.index_select(0, index) for name, t in columns.items() if t is not None}
        return self._expand(stored).to(rows.device)

    def _expand(self, stored: dict[str, Any]) -> Tensor:
        """fp32 logits from the stored columns of some rows (full fp16 logits, or top-k + tail logit)."""
        if "logits" in stored:
            return self._output_tensor("logits", stored).float()
        values, indices, tail = (
            self._output_tensor(n, stored) for n in ("topk_values", "topk_indices", "tail")
        )
        return topk_expand(values, indices, tail, self.num_classes)


def load_label_bank(
    path: str, *, revision: str | None = None, token: str | None = None, in_memory: bool | None = None
) -> LabelBank:
    """A bank from a local directory (``save_to_disk`` layout plus ``label_bank.json``) or from a Hub dataset
    repo holding that layout (:func:`push_label_bank`, or ``hf upload --repo-type dataset``), fetched with
    ``snapshot_download`` into the Hub cache."""
    from datasets import load_from_disk

    field_name = "DistillationConfig.teacher_label_bank"
    if not os.path.isdir(path):
        if os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1:
            raise ValueError(
                f"{field_name}: {path} is not a directory (nor a Hub dataset id such as org/bank)"
            )
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(repo_id=path, repo_type="dataset", revision=revision, token=token)
        except Exception as error:
            raise ValueError(
                f"{field_name}: '{path}' is no local directory and the Hub dataset could not be fetched "
                f"({type(error).__name__}: {error}); check the id, your token (hf auth login) and the network, "
                "or give the path of a bank made by recipes/label_bank.py"
            ) from error
    meta_file = Path(path, METADATA_NAME)
    if not meta_file.is_file():
        raise ValueError(
            f"{field_name}: {path} has no {METADATA_NAME}, so it is not a finished label bank; run "
            "recipes/label_bank.py (it resumes an interrupted generation), and push banks with "
            "hf_distill.label_bank.push_label_bank, which keeps that file"
        )
    return LabelBank(load_from_disk(path), json.loads(meta_file.read_text()), path, in_memory=in_memory)


def bank_files(path: str | os.PathLike) -> list[str]:
    """The files of a finished bank: its Arrow shards, datasets' own metadata and ``label_bank.json``."""
    directory = Path(path)
    names = sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file()
        and (p.suffix == ".arrow" or p.name in ("dataset_info.json", "state.json", METADATA_NAME))
    )
    if METADATA_NAME not in names or not any(n.endswith(".arrow") for n in names):
        raise FileNotFoundError(
            f"{directory} is not a finished label bank (needs {METADATA_NAME} and data-*.arrow; found {names}); "
            "run recipes/label_bank.py first"
        )
    return names


def bank_card(meta: dict[str, Any], repo_id: str) -> str:
    """The dataset card (README.md) of a pushed bank: what made it and how a training run uses it."""
    storage = "full logits (fp16)" if meta.get("topk") is None else f"top-{meta['topk']} logits + tail logit"
    sources = meta.get("teacher_sources") or ["(an in-memory teacher: identified by its weight hash)"]
    rows = [
        ("records per image (R)", meta.get("num_records")),
        ("images", meta.get("num_samples")),
        ("classes", meta.get("num_classes")),
        ("teacher input", meta.get("teacher_input")),
        ("teacher output", storage),
        ("temperature", meta.get("temperature")),
        ("bytes per image per record", f"{meta.get('bytes_per_image_per_record', float('nan')):.1f}"),
    ]
    lines = [
        "---",
        "tags:",
        "- hf-distill",
        "- label-bank",
        "- knowledge-distillation",
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        "A teacher label bank made by hf_distill's `recipes/label_bank.py`: recorded augmented views of every "
        "training image (crop box, flip, mixing partner and weight) with the teacher's output on each, so a "
        "student trains without running the teacher.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "Teachers: " + ", ".join(f"`{s}`" for s in sources),
        "",
        "Replay it (the run's data, augmentation and mixing must match the fingerprint in `label_bank.json`):",
        "",
        "```",
        f"accelerate launch recipes/funmatch.py --config CONFIG --teacher_label_bank {repo_id}",
        "```",
        "",
    ]
    return "\n".join(lines)


def push_label_bank(
    path: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload teacher label bank",
) -> Any:
    """Upload a finished bank to the Hub dataset repo ``repo_id`` as one commit: its Arrow shards, datasets'
    metadata, ``label_bank.json`` (the fingerprint training checks) and a dataset card. ``load_label_bank``
    (and ``teacher_label_bank=repo_id``) reads it back. Returns the ``CommitInfo``."""
    from huggingface_hub import HfApi

    names = bank_files(path)
    meta = json.loads(Path(path, METADATA_NAME).read_text())
    api = HfApi(library_name="hf_distill", library_version=__version__)
    staging = _stage(Path(path), names)
    try:
        repo_id = api.create_repo(
            repo_id, token=token, private=private, repo_type="dataset", exist_ok=True
        ).repo_id
        (staging / "README.md").write_text(bank_card(meta, repo_id))
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(staging),
            repo_type="dataset",
            commit_message=commit_message,
            token=token,
            revision=revision,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _features(num_classes: int, topk: int | None):
    from datasets import Features, Sequence, Value

    box = Sequence(Value("float64"), length=4)
    columns = {
        "sample_id": Value("int64"),
        "record": Value("int32"),
        "box": box,
        "flip": Value("bool"),
        "partner_id": Value("int64"),
        "partner_box": box,
        "partner_flip": Value("bool"),
        "mixed": Value("bool"),
        "cutmix": Value("bool"),
        "lam": Value("float32"),
        "cut_box": Sequence(Value("float32"), length=4),
    }
    if topk is None:
        columns["logits"] = Sequence(Value("float16"), length=num_classes)
    else:
        columns["topk_values"] = Sequence(Value("float16"), length=topk)
        columns["topk_indices"] = Sequence(Value("int32"), length=topk)
        columns["tail"] = Value("float32")
    return Features(columns)


@contextmanager
def _quiet_datasets():
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()


def generate_label_bank(
    teacher: Any,
    dataset: Any,
    output_dir: str | os.PathLike,
    *,
    num_records: int,
    teacher_input: str = "funmatch",
    augmentation: AugmentationConfig | None = None,
    mix_config: MixConfig | None = None,
    topk: int | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    interpolation: str = "bilinear",
    image_column: str = "image",
    label_names: list[str] | None = None,
    teacher_sources: list[str] | None = None,
    batch_size: int = 64,
    shard_size: int = 256,
    device: torch.device | str = "cpu",
    max_shards: int | None = None,
    progress: bool = True,
    bank_mix: str = "recorded",
) -> dict[str, Any] | None:
    """Run ``teacher`` (a :class:`Teacher` or :class:`TeacherEnsemble`, each member at its own resolution)
    over ``num_records`` recorded views of every row of ``dataset`` and write the bank to ``output_dir``.

    Resumable: finished shards of ``shard_size`` samples live under ``output_dir/shards`` and are skipped on a
    restart. Under ``accelerate launch`` the processes take shards round-robin and the main process merges.
    ``max_shards`` stops after that many new shards (returns None; used to test resumption). Returns the
    bank's metadata (fingerprint, R, k, resolutions, bytes per image per record). ``bank_mix='replay'``
    records crops only (no mixing), to be mixed at replay (``label_bank_mix='replay'``).
    """
    from accelerate import PartialState
    from datasets import Dataset, concatenate_datasets, load_from_disk
    from tqdm.auto import tqdm

    if teacher_input not in BANK_TEACHER_INPUTS:
        raise ValueError(
            f"teacher_input='{teacher_input}' cannot be held by a label bank (it holds one view per record: "
            f"{list(BANK_TEACHER_INPUTS)}); fix/ic_ens uses the teacher cache (use_teacher_cache=True)"
        )
    if not isinstance(num_records, int) or num_records < 1:
        raise ValueError(f"label_bank_records must be a positive integer, got {num_records!r}")
    augmentation = augmentation or AugmentationConfig()
    sizes = teacher_sizes(teacher)
    collator = DistillationCollator(
        student_size=sizes[0],
        teacher_size=sizes[0],
        teacher_input=teacher_input,
        augmentation=augmentation,
        seed=seed,
    )
    if bank_mix not in BANK_MIXES:
        raise ValueError(f"label_bank_mix must be one of {list(BANK_MIXES)}, got {bank_mix!r}")
    mixing = mix_config if collator.mode.mixing and bank_mix == "recorded" else None
    if mixing is not None and not (mixing.mixup_active or mixing.cutmix_active):
        mixing = None
    meta = bank_fingerprint(
        dataset=dataset,
        teacher_input=teacher_input,
        augmentation=augmentation,
        mix_config=mixing,
        label_names=label_names,
        temperature=float(temperature) if topk is not None else None,
        teacher_sources=teacher_sources,
        ensemble_reduction=getattr(teacher, "reduction", None) if hasattr(teacher, "members") else None,
    )
    meta.update(
        teacher=_teacher_identity(teacher),
        num_records=num_records,
        topk=topk,
        resolutions=list(sizes),
        interpolation=interpolation,
        seed=seed,
        label_bank_mix=bank_mix,
    )
    output = Path(output_dir)
    shard_dir = output / "shards"
    state = PartialState()
    num_samples = len(dataset)
    num_shards = max(1, -(-num_samples // shard_size))
    if state.is_main_process:
        shard_dir.mkdir(parents=True, exist_ok=True)
        plan_file = shard_dir / "plan.json"
        plan = {"meta": meta, "shard_size": shard_size}
        if plan_file.is_file() and json.loads(plan_file.read_text()) != json.loads(
            json.dumps(plan, default=str)
        ):
            raise ValueError(
                f"{shard_dir} holds shards of another generation (other teacher, data or settings); remove it or "
                "choose another output_dir"
            )
        plan_file.write_text(json.dumps(plan, default=str, indent=1))
    state.wait_for_everyone()
    mine = [i for i in range(num_shards) if i % state.num_processes == state.process_index]
    todo = [i for i in mine if not (shard_dir / f"shard-{i:05d}").is_dir()]
    if max_shards is not None:
        todo = todo[:max_shards]
    sample_ids = (
        [int(v) for v in dataset["sample_id"]]
        if "sample_id" in dataset.column_names
        else list(range(num_samples))
    )
    images_only = dataset.select_columns([image_column])
    num_classes: int | None = None
    total = sum(min(shard_size, num_samples - i * shard_size) for i in todo) * num_records
    bar = tqdm(
        total=total, desc="label bank", unit="view", disable=not progress or not state.is_local_main_process
    )

    def image_at(position: int) -> Any:
        return to_rgb(images_only[position][image_column])

    for shard in todo:
        positions = range(shard * shard_size, min(num_samples, (shard + 1) * shard_size))
        jobs: list[tuple[int, int, ViewRecord, Any, Any]] = []
        for position in positions:
            image = image_at(position)
            for record in range(num_records):
                partner_position = (
                    choose_partner(seed, record, sample_ids[position], position, num_samples)
                    if mixing
                    else None
                )
                partner_image = image_at(partner_position) if partner_position is not None else None
                partner = (
                    (sample_ids[partner_position], partner_image.size) if partner_image is not None else None
                )
                view = make_record(collator, mixing, record, sample_ids[position], image.size, partner)
                jobs.append((sample_ids[position], record, view, image, partner_image))
        outputs = []
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            views = {
                size: render_records(
                    [j[2] for j in chunk], [j[3] for j in chunk], [j[4] for j in chunk], size, interpolation
                ).to(device)
                for size in sizes
            }
            with torch.no_grad():
                # looked up on the module at call time, so the teacher forward can be observed in tests
                outputs.append(teacher_cache._teacher_forward(teacher, views).float().cpu())
            bar.update(len(chunk))
        logits = torch.cat(outputs)
        num_classes = logits.shape[-1]
        (shard_dir / "num_classes.txt").write_text(str(num_classes))
        columns: dict[str, Any] = {
            "sample_id": [j[0] for j in jobs],
            "record": [j[1] for j in jobs],
            **{f.name: [getattr(j[2], f.name) for j in jobs] for f in fields(ViewRecord)},
        }
        if topk is None:
            columns["logits"] = logits.half().numpy()
        else:
            values, indices, tail = topk_compress(logits, topk, temperature)
            columns.update(topk_values=values.half().numpy(), topk_indices=indices.numpy(), tail=tail.numpy())
        part = Dataset.from_dict(
            columns, features=_features(num_classes, None if topk is None else min(topk, num_classes))
        )
        tmp = shard_dir / f".shard-{shard:05d}.{os.getpid()}.tmp"
        with _quiet_datasets():  # one bar for the whole generation, not one per shard
            part.save_to_disk(str(tmp))
        os.replace(tmp, shard_dir / f"shard-{shard:05d}")  # a shard exists only when complete
    bar.close()
    state.wait_for_everyone()
    if max_shards is not None and any(not (shard_dir / f"shard-{i:05d}").is_dir() for i in range(num_shards)):
        return None
    if not state.is_main_process:
        state.wait_for_everyone()
        return json.loads((output / METADATA_NAME).read_text())
    bank = concatenate_datasets(
        [load_from_disk(str(shard_dir / f"shard-{i:05d}")) for i in range(num_shards)]
    )
    meta["num_classes"] = int((shard_dir / "num_classes.txt").read_text())
    bank.info.description = json.dumps(meta, default=str)
    for stale in output.glob("data-*.arrow"):
        stale.unlink()
    bank.save_to_disk(str(output), num_shards=max(1, min(num_shards, 64)))
    payload = sum(f.stat().st_size for f in output.glob("data-*.arrow"))
    meta["bytes_per_image_per_record"] = payload / (num_samples * num_records)
    meta["bytes_per_image"] = payload / num_samples
    (output / METADATA_NAME).write_text(json.dumps(meta, default=str, indent=1))
    shutil.rmtree(shard_dir)
    logger.info(
        "label bank: %d images x %d records -> %s (%.1f bytes per image per record)",
        num_samples,
        num_records,
        output,
        meta["bytes_per_image_per_record"],
    )
    if state.num_processes > 1:
        state.wait_for_everyone()
    return meta


# ------------------------------------------------------------------------------------------------- replay
@dataclass
class LabelBankCollator(DistillationCollator):
    """The training collator of a bank replay: each sample's record is chosen by (seed, epoch, sample id);
    in same/funmatch modes the student's view is rebuilt from it (with the recorded partner and mix), in
    ind/fix modes the student draws its own view as live. Emits ``bank_rows`` and ``bank_logits`` (the stored
    teacher output, read here in the loader workers), and with mixing ``mix_lam`` plus ``mix_partner_labels``
    for the mixed-label CE."""

    bank: LabelBank | None = None
    dataset: Any = None  # the training rows, to fetch mixing partners by sample id
    partner_cache_bytes: int = 256 * 2**20  # decoded mixing partners kept between batches (LRU)
    replay_mix: MixConfig | None = None  # label_bank_mix='replay': mix recorded crops with these settings
    replay_temperature: float = 1.0  # ... and the two teacher distributions at this temperature
    _positions: dict[int, int] = field(default_factory=dict, repr=False)
    _ids: list[int] = field(default_factory=list, repr=False)
    _plan: tuple = field(default=(), repr=False)  # (seed, epoch, replay_mix_plan(...)) of the last epoch
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _cache_bytes: int = 0
    _partner_data: Any = None

    @classmethod
    def from_collator(
        cls, base: DistillationCollator, bank: LabelBank, dataset: Any, **options: Any
    ) -> LabelBankCollator:
        collator = cls(
            **{f.name: getattr(base, f.name) for f in fields(DistillationCollator)},
            bank=bank,
            dataset=dataset,
            **options,
        )
        if dataset is not None and "sample_id" in dataset.column_names:
            collator._ids = [int(s) for s in dataset["sample_id"]]
            collator._positions = {s: i for i, s in enumerate(collator._ids)}
        elif dataset is not None:
            collator._ids = list(range(len(dataset)))
        return collator

    def _mix_at_replay(
        self, records: list[ViewRecord], logits: Tensor, sample_ids: list[int]
    ) -> tuple[list[ViewRecord], Tensor]:
        """``label_bank_mix='replay'``: pair each replayed crop with a partner's recorded crop, with the
        epoch's plan (:func:`replay_mix_plan`), and mix the two stored teacher distributions."""
        bank = self.bank
        if self._plan[:2] != (self.seed, self.epoch):
            plan = replay_mix_plan(
                self.seed, self.epoch, len(self._ids), bank.num_records, self.replay_mix, self.student_size
            )
            self._plan = (self.seed, self.epoch, plan)
        partners, partner_records, params, lams = self._plan[2]
        at = [self._positions.get(s, s) for s in sample_ids]
        partner_ids = [self._ids[int(partners[i])] for i in at]
        rows = [bank.row(p, int(partner_records[i])) for p, i in zip(partner_ids, at)]
        theirs, partner_logits = bank.lookup(rows)
        applied, cutmix = params.applied[at].tolist(), params.use_cutmix[at].tolist()
        boxes, lam = params.boxes[at].tolist(), lams[at]
        mixed = [
            replace(
                own,
                partner_id=partner_id,
                partner_box=other.box,
                partner_flip=other.flip,
                mixed=applied[j],
                cutmix=cutmix[j],
                lam=float(lam[j]),
                cut_box=tuple(boxes[j]),
            )
            for j, (own, other, partner_id) in enumerate(zip(records, theirs, partner_ids))
        ]
        return mixed, mix_distributions(logits, partner_logits, lam, self.replay_temperature)

    def _partners(self, records: list[ViewRecord]) -> tuple[list[Any], list[int | None]]:
        """The partner images (None where a record is not mixed) and labels. Decoded partners are kept in a
        small LRU cache (``partner_cache_bytes``): a partner is an extra image per sample that the live
        collator never decodes, and decoding dominates the collator's cost on small images."""
        wanted = [r.partner_id for r in records if r.mixed]
        found = {s: self._cache[s] for s in wanted if s in self._cache}
        missing = [s for s in dict.fromkeys(wanted) if s not in found]
        if missing:
            labelled = bool(self.label_column) and self.label_column in self.dataset.column_names
            if self._partner_data is None:  # unlabelled data: the partners have images only
                columns = [self.image_column] + ([self.label_column] if labelled else [])
                self._partner_data = self.dataset.select_columns(columns)
            rows = self._partner_data[[self._positions.get(s, s) for s in missing]]
            labels = rows[self.label_column] if labelled else [None] * len(missing)
            for sample_id, value, label in zip(missing, rows[self.image_column], labels):
                found[sample_id] = (load_pixels(value, sample_id, self.image_column), label)
        for sample_id, entry in found.items():  # most recently used last; evict from the front
            if sample_id in self._cache:
                self._cache.move_to_end(sample_id)
                continue
            self._cache[sample_id] = entry
            self._cache_bytes += entry[0].numel()
        while self._cache_bytes > self.partner_cache_bytes and self._cache:
            image, _ = self._cache.popitem(last=False)[1]
            self._cache_bytes -= image.numel()
        out_images = [found[r.partner_id][0] if r.mixed else None for r in records]
        out_labels = [found[r.partner_id][1] if r.mixed else None for r in records]
        return out_images, out_labels

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Tensor]:
        bank = self.bank
        images, bank_rows, sample_ids, labels = [], [], [], []
        for position, row in enumerate(rows):
            sample_id = int(row.get("sample_id", position))
            images.append(load_pixels(row[self.image_column], sample_id, self.image_column))
            bank_rows.append(
                bank.row(sample_id, replay_record(self.seed, self.epoch, sample_id, bank.num_records))
            )
            sample_ids.append(sample_id)
            label = row.get(self.label_column) if self.label_column is not None else None
            if label is not None:
                labels.append(int(label))
        records, stored_logits = bank.lookup(bank_rows)
        if self.replay_mix is not None:
            records, stored_logits = self._mix_at_replay(records, stored_logits, sample_ids)
        partners, partner_labels = self._partners(records) if self.mode.relation == "same" else ([], [])
        if self.mode.relation == "same":
            pixels = render_records(records, images, partners, self.student_size, self.student_interpolation)
        else:  # the teacher's view was independent / fixed: the student's is drawn live
            pixels = torch.stack(
                [
                    render_view(
                        img,
                        self.view_params(s, img.shape[1], img.shape[0])[0],
                        self.student_size,
                        self.student_interpolation,
                    )
                    for img, s in zip(images, sample_ids)
                ]
            )
        batch = {
            "pixel_values": pixels,
            "sample_ids": torch.tensor(sample_ids, dtype=torch.long),
            "bank_rows": torch.tensor(bank_rows, dtype=torch.long),
            "bank_logits": stored_logits,
        }
        if labels and len(labels) == len(rows):
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if any(r.mixed for r in records):
            batch["mix_lam"] = torch.tensor([r.lam for r in records], dtype=torch.float32)
            if "labels" in batch:
                batch["mix_partner_labels"] = torch.tensor(
                    [int(p) if r.mixed else lab for r, p, lab in zip(records, partner_labels, labels)],
                    dtype=torch.long,
                )
        return batch


def validate_bank_config(config: Any, fail: Any) -> None:
    """Config check: the label-bank fields, and what a bank cannot replay."""
    if not isinstance(config.label_bank_records, int) or config.label_bank_records < 1:
        fail("label_bank_records", f"must be a positive integer, got {config.label_bank_records!r}")
    if config.label_bank_in_memory not in (None, True, False):
        fail(
            "label_bank_in_memory",
            f"must be true, false or null (auto), got {config.label_bank_in_memory!r}",
        )
    if not isinstance(config.label_bank_shard_size, int) or config.label_bank_shard_size < 1:
        fail("label_bank_shard_size", f"must be a positive integer, got {config.label_bank_shard_size!r}")
    if config.label_bank_topk is not None and (
        not isinstance(config.label_bank_topk, int) or config.label_bank_topk < 1
    ):
        fail(
            "label_bank_topk",
            f"must be a positive integer or None (full logits), got {config.label_bank_topk!r}",
        )
    if config.label_bank_mix not in BANK_MIXES:
        fail("label_bank_mix", f"must be one of {list(BANK_MIXES)}, got {config.label_bank_mix!r}")
    if config.label_bank_mix == "replay":
        if config.teacher_input != "funmatch":
            fail(
                "label_bank_mix",
                f"='replay' mixes recorded crops at replay, which only teacher_input='funmatch' mixes, but "
                f"teacher_input={config.teacher_input!r}; set label_bank_mix='recorded' or teacher_input='funmatch'",
            )
        if not mix_config_of(config).mixup_active and not mix_config_of(config).cutmix_active:
            fail(
                "label_bank_mix",
                "='replay' has nothing to mix: mixup_alpha, cutmix_alpha and cutmix_minmax are all off; set "
                "label_bank_mix='recorded' or turn mixup/CutMix on",
            )
    if config.teacher_label_bank is not None:
        refuse_unrepresentable(config, fail)  # modes and terms that need the live teacher


def refuse_unrepresentable(args: Any, fail: Any = None) -> None:
    """Raise for a config whose teacher use a bank cannot replay (``fail(field, message)`` wording)."""

    def _fail(name: str, message: str) -> None:
        raise ValueError(f"DistillationConfig.{name}: {message}")

    fail = fail or _fail
    if args.teacher_input not in BANK_TEACHER_INPUTS:
        fail(
            "teacher_input",
            f"={args.teacher_input!r} cannot be replayed from a label bank (teacher_label_bank); "
            f"use one of {list(BANK_TEACHER_INPUTS)} or drop teacher_label_bank (fix/ic_ens uses the teacher cache)",
        )
    if args.teacher_feature_layers:
        fail(
            "teacher_feature_layers",
            "needs the teacher's features, which a label bank does not store; drop "
            "teacher_label_bank or the feature terms",
        )
    if args.augmentation_mode != "none":
        fail(
            "augmentation_mode",
            f"={args.augmentation_mode!r} labels new images with the live teacher, which a "
            "label bank cannot do; set augmentation_mode='none' or drop teacher_label_bank",
        )
    if args.slkd_num_teachers:
        fail(
            "slkd_num_teachers",
            "self-learning teachers train beside the student; they cannot come from a label "
            "bank; drop teacher_label_bank",
        )


def teacher_sources(teacher_model: Any) -> list[str] | None:
    """The teacher id(s) a run names, for the bank fingerprint; None for in-memory modules (not comparable)."""
    if teacher_model is None:
        return None
    models = list(teacher_model) if isinstance(teacher_model, (list, tuple)) else [teacher_model]
    return [str(m) for m in models] if all(isinstance(m, (str, os.PathLike)) for m in models) else None


def attach_label_bank(
    args: Any,
    collator: Any,
    source_dataset: Any,
    train_dataset: Any,
    label_names: list[str],
    sources: list[str] | None,
) -> tuple[LabelBank, LabelBankCollator]:
    """Load ``args.teacher_label_bank``, check its fingerprint against this run (``source_dataset`` is the
    training data as given, before sample ids were added), and wrap the training collator for replay."""
    if not isinstance(collator, DistillationCollator):
        raise ValueError(
            "DistillationConfig.teacher_label_bank: the replay rebuilds views in hf_distill's collator, but a custom "
            f"data_collator ({type(collator).__name__}) was given; drop data_collator= or teacher_label_bank"
        )
    bank = load_label_bank(args.teacher_label_bank, in_memory=args.label_bank_in_memory)
    mixing = mix_config_of(args) if collator.mode.mixing else None
    if mixing is not None and not (mixing.mixup_active or mixing.cutmix_active):
        mixing = None
    replay_mix = mixing if args.label_bank_mix == "replay" else None
    recorded = bank.meta.get("label_bank_mix", "recorded")
    if replay_mix is not None and bank.meta.get("mixing") is not None:
        raise ValueError(
            f"DistillationConfig.label_bank_mix='replay' mixes recorded crops at replay, but the bank "
            f"{args.teacher_label_bank} records mixed views; set label_bank_mix='recorded', or generate a bank of "
            "crops only with label_bank_mix='replay'"
        )
    if mixing is not None and replay_mix is None and recorded == "replay":
        raise ValueError(
            f"DistillationConfig.label_bank_mix='recorded' replays recorded mixed views, but the bank "
            f"{args.teacher_label_bank} records crops only (made with label_bank_mix='replay'); set "
            "label_bank_mix='replay' to mix them at replay, or generate a bank with label_bank_mix='recorded'"
        )
    if replay_mix is not None:
        mixing = None  # the bank's fingerprint: crops only
    run = bank_fingerprint(
        dataset=source_dataset,
        teacher_input=args.teacher_input,
        augmentation=collator.augmentation,
        mix_config=mixing,
        label_names=label_names,
        temperature=float(args.temperature),
        teacher_sources=sources,
        ensemble_reduction=args.teacher_ensemble_reduction
        if sources is not None and len(sources) > 1
        else None,
    )
    if not args.teacher_label_bank_ignore_fingerprint:
        check_fingerprint(bank.meta, run, args.teacher_label_bank)
    if bank.num_classes != len(label_names):  # never overridable: the loss could not even be computed
        raise ValueError(
            f"DistillationConfig.teacher_label_bank: the bank stores {bank.num_classes} classes but the data has "
            f"{len(label_names)}"
        )
    options = dict(replay_mix=replay_mix, replay_temperature=float(args.temperature))
    return bank, LabelBankCollator.from_collator(collator, bank, train_dataset, **options)


def generate_for_trainer(
    trainer: Any, dataset: Any, output_dir: str | os.PathLike, args: Any | None = None, **kwargs: Any
) -> dict[str, Any] | None:
    """:func:`generate_label_bank` with everything taken from a :class:`DistillationTrainer` built with the
    teacher (its label-aligned teacher, augmentation, mixing, R = ``label_bank_records``, k =
    ``label_bank_topk``, seed); ``dataset`` is the training data as given to the trainer."""
    args = args if args is not None else trainer.args
    if trainer.teacher is None:
        raise ValueError("generating a label bank needs a teacher: set teacher_model_name_or_path")
    collator = trainer.build_collator(args, train=True)
    options: dict[str, Any] = dict(
        num_records=args.label_bank_records,
        teacher_input=args.teacher_input,
        augmentation=collator.augmentation,
        mix_config=mix_config_of(args),
        topk=args.label_bank_topk,
        temperature=args.temperature,
        seed=args.seed,
        interpolation=collator.teacher_interpolation,
        image_column=args.image_column_name,
        label_names=trainer.label_names_,
        teacher_sources=teacher_sources(args.teacher_model_name_or_path),
        batch_size=args.per_device_eval_batch_size,
        shard_size=args.label_bank_shard_size,
        device=trainer.accelerator.device,
        progress=not args.disable_tqdm,
        bank_mix=args.label_bank_mix,
    )
    options.update(kwargs)
    return generate_label_bank(trainer.teacher, dataset, output_dir, **options)


class BankTeacher(TeacherSource):
    """A label bank as a teacher source: each training batch carries the stored teacher output of the record
    it replays (``bank_logits``, read by the collator); there is no teacher at evaluation (no teacher
    metrics) and none to label images made inside a step."""

    default_exports = {"label_bank": None}
    loads_teacher = False

    def __init__(self, args: Any, teacher_model: Any = None):
        self.args = args
        self.sources = teacher_sources(teacher_model)
        self.bank: LabelBank | None = None

    @classmethod
    def applies(cls, args: Any, has_teacher: bool) -> bool:
        return args.teacher_label_bank is not None

    @classmethod
    def provisions(cls, args: Any, ensemble: bool, topk: int | None = None) -> Provides:
        topk = topk if topk is not None else args.label_bank_topk
        replay = args.label_bank_mix == "replay"
        detail = "teacher_label_bank" + (f", label_bank_topk={topk}" if topk else "")
        detail += ", label_bank_mix='replay'" if replay else ""
        return Provides(
            name=f"a label bank ({detail})",
            setting="teacher_label_bank",
            # mixed at replay: a mix of two distributions at `temperature`, not a teacher's logits
            logits=not topk and not replay,
            temperature=float(args.temperature),
            features=False,
            live=False,
            labels_new=False,
            alternative="drop teacher_label_bank to train with the live teacher"
            + ("" if not topk else ", or use a bank of full logits (label_bank_topk=null)")
            + ("" if not replay else ", or replay recorded mixes (label_bank_mix='recorded')"),
        )

    def provides(self, train: bool) -> Provides | None:
        if not train:
            return None
        topk = self.bank.meta.get("topk") if self.bank is not None else None
        if topk is not None and self.bank is not None and int(topk) >= self.bank.num_classes:
            topk = None  # k = C stores the full logits
        return (
            self.provisions(self.args, False, topk=topk or None)
            if self.bank is not None
            else self.provisions(self.args, False)
        )

    def attach(self, collator: Any, source_dataset: Any, train_dataset: Any, label_names: list[str]) -> Any:
        self.bank, collator = attach_label_bank(
            self.args, collator, source_dataset, train_dataset, label_names, self.sources
        )
        return collator

    def __call__(self, batch: dict[str, Tensor], train: bool) -> ModelOutputs:
        if BANK_ROWS not in batch:
            return ModelOutputs(None)
        stored = batch.get(BANK_LOGITS)  # replay: the stored teacher output, read by the collator
        return ModelOutputs(stored if stored is not None else self.bank.teacher_logits(batch[BANK_ROWS]))

    def exports(self) -> dict[str, Any]:
        return {"label_bank": self.bank}
