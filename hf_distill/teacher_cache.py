"""Fixed-teacher cache: teacher outputs computed once per sample, stored on disk, looked up while training.

In the ``fix/*`` teacher-input modes the teacher's view of a sample never changes (``fix/rs`` the resized
image, ``fix/cc`` the central crop, ``fix/ic_ens`` the average over K inception crops), so its outputs are
computed once, before training, and the trainer reads them by ``sample_ids`` instead of running the
teacher: an epoch then costs about what a student-only epoch costs.

A cache file is named by a hash of everything its values depend on: the dataset fingerprint and size, the
teacher (its source and a hash of its weights), the mode, every resolution and crop parameter, the class
order and, where it matters, the temperature. A second run with the same inputs reuses the file; any
change produces a new file.

Storage: full fp32 logits ``(N, C)``, or with ``topk=k`` the k largest logits and their class indices plus
one *tail logit* per sample. The tail logit is chosen so that ``softmax(reconstructed / temperature)``
gives exactly the teacher's top-k probabilities and spreads the remaining mass evenly over the other
classes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .batch import SAMPLE_IDS
from .collators import (
    AugmentationConfig,
    ViewParams,
    parse_teacher_input,
    render_view,
    sample_box,
    sample_generator,
    to_rgb,
)
from .contract import Provides
from .images import rgb_pixels
from .losses import ModelOutputs
from .teacher import LiveTeacher, TeacherSource, average_tempered_probabilities, teacher_sizes_of

logger = logging.getLogger(__name__)

# 2: views rendered from whole-pixel boxes by torch's kernel (render_view); a version-1 cache saw other pixels
CACHE_FORMAT_VERSION = 2
_IC_ENS_STREAM = 16  # per-sample random streams 16, 17, ... for the K ensemble crops (0/1 are the views')


def default_cache_dir() -> str:
    """``$HF_HOME/hf_distill/teacher_cache`` (``~/.cache/huggingface`` when HF_HOME is unset)."""
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return os.path.join(home, "hf_distill", "teacher_cache")


def weights_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes, values): identifies the teacher's weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of the JSON of ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def topk_compress(logits: Tensor, k: int, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """The top-k logits ``(N, k)``, their class indices ``(N, k)`` and the tail logit ``(N,)``.

    With ``S = sum_topk exp(z / T)`` and tail mass ``m = 1 - sum_topk softmax(z / T)``, the tail logit is
    ``T * log(m * S / ((1 - m) * (C - k)))``: filling the other ``C - k`` classes with it gives them
    ``m / (C - k)`` each at temperature ``T`` and leaves the top-k probabilities unchanged.
    """
    z = logits.double()
    num_classes = z.shape[-1]
    k = min(k, num_classes)
    values, indices = z.topk(k, dim=-1)
    if k == num_classes:
        return values.float(), indices.int(), torch.full((z.shape[0],), -math.inf)
    log_p = torch.log_softmax(z / temperature, dim=-1).gather(-1, indices)
    log_top_mass = torch.logsumexp(log_p, dim=-1).clamp(max=-1e-15)  # log(1 - m)
    log_tail_mass = torch.log(-torch.expm1(log_top_mass))  # log(m)
    log_top_sum = torch.logsumexp(values / temperature, dim=-1)  # log(S)
    tail = temperature * (log_tail_mass - log_top_mass + log_top_sum - math.log(num_classes - k))
    return values.float(), indices.int(), tail.float()


def topk_expand(values: Tensor, indices: Tensor, tail: Tensor, num_classes: int) -> Tensor:
    """Full logits ``(N, C)`` from :func:`topk_compress`'s output."""
    full = tail.float()[:, None].expand(values.shape[0], num_classes).clone()
    return full.scatter_(-1, indices.long(), values.float())


class TeacherCache:
    """Teacher logits for every sample id of one dataset, full or top-k compressed, on disk and in memory."""

    def __init__(
        self,
        sample_ids: Tensor,
        num_classes: int,
        logits: Tensor | None = None,
        topk_values: Tensor | None = None,
        topk_indices: Tensor | None = None,
        tail: Tensor | None = None,
        key: str | None = None,
        meta: dict[str, Any] | None = None,
    ):
        if logits is None and topk_values is None:
            raise ValueError("a TeacherCache needs full logits or top-k values")
        self.sample_ids = sample_ids.long()
        self.num_classes = int(num_classes)
        self.logits, self.topk_values, self.topk_indices, self.tail = logits, topk_values, topk_indices, tail
        self.key = key
        self.meta = dict(meta or {})
        self.position = torch.full((int(self.sample_ids.max()) + 1,), -1, dtype=torch.long)
        self.position[self.sample_ids] = torch.arange(len(self.sample_ids))
        self.hit = False  # whether it was read from disk rather than computed

    def __len__(self) -> int:
        return len(self.sample_ids)

    def lookup(self, sample_ids: Tensor) -> Tensor:
        """Teacher logits ``(B, C)`` fp32 for a batch of sample ids, on the ids' device."""
        ids = sample_ids.detach().long().cpu()
        if int(ids.min()) < 0 or int(ids.max()) >= len(self.position) or bool((self.position[ids] < 0).any()):
            missing = [int(i) for i in ids if i >= len(self.position) or i < 0 or self.position[i] < 0]
            raise KeyError(f"sample ids {missing[:10]} are not in the teacher cache {self.key}")
        rows = self.position[ids]
        if self.logits is not None:
            out = self.logits.index_select(0, rows)
        else:
            out = topk_expand(
                self.topk_values.index_select(0, rows),
                self.topk_indices.index_select(0, rows),
                self.tail.index_select(0, rows),
                self.num_classes,
            )
        return out.to(sample_ids.device)

    # ---------------------------------------------------------------------------------------- storage
    def save(self, path: str | os.PathLike) -> None:
        """Write one safetensors file atomically (a temporary file moved into place)."""
        from safetensors.torch import save_file

        tensors = {"sample_ids": self.sample_ids.contiguous()}
        if self.logits is not None:
            tensors["logits"] = self.logits.float().contiguous()
        else:
            tensors.update(
                topk_values=self.topk_values.contiguous(),
                topk_indices=self.topk_indices.contiguous(),
                tail=self.tail.contiguous(),
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        metadata = {"num_classes": str(self.num_classes), "meta": json.dumps(self.meta, default=str)}
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TeacherCache:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        cache = cls(
            tensors["sample_ids"],
            int(metadata["num_classes"]),
            logits=tensors.get("logits"),
            topk_values=tensors.get("topk_values"),
            topk_indices=tensors.get("topk_indices"),
            tail=tensors.get("tail"),
            key=Path(path).stem,
            meta=json.loads(metadata.get("meta", "{}")),
        )
        cache.hit = True
        return cache


# ------------------------------------------------------------------------------------------------ build
def teacher_sizes(teacher: Any) -> tuple[int, ...]:
    """The input resolutions a teacher (or ensemble) needs."""
    return teacher_sizes_of(teacher)


def _teacher_forward(teacher: Any, views: dict[int, Tensor]) -> Tensor:
    if getattr(teacher, "image_sizes", None):
        return teacher(views)
    return teacher(views[teacher.preprocess.image_size])


def _teacher_identity(teacher: Any) -> list[dict[str, Any]]:
    members = getattr(teacher, "members", None) or [teacher]
    return [
        {
            "source": str(m.source),
            "weights": weights_hash(m.module),
            "size": m.preprocess.image_size,
            "mean": list(m.preprocess.mean),
            "std": list(m.preprocess.std),
            "dtype": str(m.dtype),
        }
        for m in members
    ]


def _fixed_view(teacher_crop: str, width: int, height: int, crop_fraction: float) -> ViewParams:
    # rs and cc boxes draw nothing from the generator: the view is the same in every epoch.
    rng = sample_generator(0, 0, 0, 0)
    return ViewParams(sample_box(teacher_crop, width, height, rng, crop_fraction=crop_fraction))


def _ic_ens_views(
    sample_id: int, width: int, height: int, crops: int, seed: int, augmentation: AugmentationConfig
) -> list[ViewParams]:
    views = []
    for k in range(crops):
        rng = sample_generator(seed, 0, sample_id, _IC_ENS_STREAM + k)
        box = sample_box("ic", width, height, rng, augmentation.crop_scale, augmentation.crop_ratio)
        views.append(ViewParams(box, bool(rng.random() < augmentation.hflip)))
    return views


def compute_teacher_outputs(
    teacher: Any,
    rows: Iterable[dict[str, Any]],
    teacher_input: str,
    *,
    augmentation: AugmentationConfig,
    interpolation: str = "bilinear",
    image_column: str = "image",
    temperature: float = 1.0,
    ic_ens_crops: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Run ``teacher`` on the fixed view(s) of every row; returns (sample_ids, logits fp32 on the CPU).

    ``fix/rs``/``fix/cc``: one view per sample. ``fix/ic_ens``: ``ic_ens_crops`` inception crops per sample
    whose probabilities at ``temperature`` are averaged (returned as ``T * log(mean p)``, see
    :func:`hf_distill.teacher.average_tempered_probabilities`).
    """
    mode = parse_teacher_input(teacher_input, augmentation.crop)
    if mode.relation != "fixed":
        raise ValueError(
            f"the teacher cache is for fix/* teacher inputs, got teacher_input='{teacher_input}'"
        )
    sizes = teacher_sizes(teacher)
    ids_out: list[int] = []
    logits_out: list[Tensor] = []
    pending: list[tuple[Any, ViewParams]] = []

    def run(batch: list[tuple[Any, ViewParams]]) -> Tensor:
        views = {
            size: torch.stack([render_view(img, p, size, interpolation) for img, p in batch]).to(device)
            for size in sizes
        }
        return _teacher_forward(teacher, views).float().cpu()

    for position, row in enumerate(rows):
        sample_id = int(row.get("sample_id", position))
        image = to_rgb(row[image_column])
        pixels = rgb_pixels(image)  # converted once for every crop and size
        if mode.teacher_crop == "ic_ens":
            crops = [
                (pixels, p) for p in _ic_ens_views(sample_id, *image.size, ic_ens_crops, seed, augmentation)
            ]
            crop_logits = [run(crops[i : i + batch_size]) for i in range(0, len(crops), batch_size)]
            per_crop = torch.cat(crop_logits)
            logits_out.append(average_tempered_probabilities(list(per_crop.unbind(0)), temperature)[None])
        else:
            pending.append((pixels, _fixed_view(mode.teacher_crop, *image.size, augmentation.crop_fraction)))
            if len(pending) == batch_size:
                logits_out.append(run(pending))
                pending = []
        ids_out.append(sample_id)
    if pending:
        logits_out.append(run(pending))
    return torch.tensor(ids_out, dtype=torch.long), torch.cat(logits_out)


def load_or_build_cache(
    teacher: Any,
    dataset: Any,
    teacher_input: str,
    *,
    augmentation: AugmentationConfig,
    cache_dir: str | os.PathLike | None = None,
    topk: int | None = None,
    interpolation: str = "bilinear",
    image_column: str = "image",
    temperature: float = 1.0,
    ic_ens_crops: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    label_names: list[str] | None = None,
    write: bool = True,
) -> TeacherCache:
    """The cache for this (dataset, teacher, mode, resolution …): read from ``cache_dir`` when present,
    otherwise computed with :func:`compute_teacher_outputs` and written there (``write=False``: only kept
    in memory, e.g. on non-main processes)."""
    mode = parse_teacher_input(teacher_input, augmentation.crop)
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None:
        raise ValueError(
            "the teacher cache needs a datasets.Dataset (its fingerprint identifies the data); pass one or "
            "set DistillationConfig.use_teacher_cache=False"
        )
    parts: dict[str, Any] = {
        "version": CACHE_FORMAT_VERSION,
        "dataset": fingerprint,
        "num_samples": len(dataset),
        "teacher": _teacher_identity(teacher),
        "teacher_input": teacher_input,
        "sizes": list(teacher_sizes(teacher)),
        "interpolation": interpolation,
        "labels": label_names,
        "topk": topk,
    }
    if mode.teacher_crop == "cc":
        parts["crop_fraction"] = augmentation.crop_fraction
    if mode.teacher_crop == "ic_ens":
        parts.update(
            crops=ic_ens_crops,
            seed=seed,
            crop_scale=list(augmentation.crop_scale),
            crop_ratio=list(augmentation.crop_ratio),
            hflip=augmentation.hflip,
        )
    reduction = getattr(teacher, "reduction", None) if getattr(teacher, "members", None) else None
    if reduction not in (None, "probability_mean"):  # what an ensemble stores depends on how it is reduced
        parts["ensemble_reduction"] = reduction
    if mode.teacher_crop == "ic_ens" or topk is not None or getattr(teacher, "members", None):
        # averaged probabilities (ic_ens, ensembles) and the top-k tail logit depend on the temperature
        parts["temperature"] = temperature
    key = cache_key(parts)
    directory = Path(cache_dir) if cache_dir is not None else Path(default_cache_dir())
    path = directory / f"{key}.safetensors"
    if path.is_file():
        logger.info("teacher cache hit: %s", path)
        return TeacherCache.load(path)
    logger.info("teacher cache miss: computing teacher outputs for %d samples -> %s", len(dataset), path)
    sample_ids, logits = compute_teacher_outputs(
        teacher,
        dataset,
        teacher_input,
        augmentation=augmentation,
        interpolation=interpolation,
        image_column=image_column,
        temperature=temperature,
        ic_ens_crops=ic_ens_crops,
        seed=seed,
        batch_size=batch_size,
        device=device,
    )
    if topk is not None:
        values, indices, tail = topk_compress(logits, topk, temperature)
        cache = TeacherCache(
            sample_ids,
            logits.shape[-1],
            topk_values=values,
            topk_indices=indices,
            tail=tail,
            key=key,
            meta=parts,
        )
    else:
        cache = TeacherCache(sample_ids, logits.shape[-1], logits=logits, key=key, meta=parts)
    if write:
        cache.save(path)
    return cache


# ------------------------------------------------------------------------------------ teacher source
class CachedTeacher(TeacherSource):
    """The fixed-teacher cache as a teacher source: in training, the stored outputs of each sample's fixed
    view, looked up by ``sample_ids`` (the teacher never runs and the collator renders no teacher view);
    at evaluation, and for images made inside a step, the live teacher."""

    default_exports = {"teacher_cache": None}

    def __init__(self, live: LiveTeacher, args: Any):
        self.live = live
        self.teacher = live.teacher
        self.args = args
        self.cache: TeacherCache | None = None

    @classmethod
    def applies(cls, args: Any, has_teacher: bool) -> bool:
        return has_teacher and bool(args.use_teacher_cache) and args.teacher_input.startswith("fix/")

    @classmethod
    def provisions(cls, args: Any, ensemble: bool) -> Provides:
        ic_ens = args.teacher_input == "fix/ic_ens"
        topk = args.teacher_cache_topk
        detail = f"teacher_input={args.teacher_input}" + (f", teacher_cache_topk={topk}" if topk else "")
        if ic_ens:
            alternative = "use fix/cc or fix/rs (or a same/* mode) for this"
        elif topk:
            alternative = "set teacher_cache_topk=null (full logits), or use_teacher_cache=false"
        else:
            alternative = "set use_teacher_cache=false to run the teacher on the fixed view"
        return Provides(
            name=f"the fixed-teacher cache ({detail})",
            setting="use_teacher_cache",
            # an ensemble's stored output is a logit vector only for the logit mean (hf_distill.teacher)
            logits=not (ic_ens or topk or (ensemble and args.teacher_ensemble_reduction != "logit_mean")),
            temperature=float(args.temperature),
            features=False,
            live=False,
            labels_new=True,  # the teacher is loaded: images made in a step are labelled live
            single_view=not ic_ens,
            alternative=alternative,
        )

    def provides(self, train: bool) -> Provides:
        if not train:
            return self.live.provides(train)
        return self.provisions(self.args, hasattr(self.teacher, "members"))

    def teacher_view_sizes(self, train: bool) -> tuple[int, ...]:
        return () if train else self.live.teacher_view_sizes(train)

    def prepare(self, trainer: Any) -> None:
        args = self.args
        if trainer.train_dataset is None:
            return  # nothing to train on: evaluation runs the live teacher
        if getattr(trainer.train_dataset, "_fingerprint", None) is None:
            raise ValueError(
                f"DistillationConfig.use_teacher_cache with teacher_input={args.teacher_input!r}: the cache stores "
                "one output per row of a map-style datasets.Dataset (its fingerprint identifies the data), but "
                f"train_dataset is a {type(trainer.train_dataset).__name__}; pass a datasets.Dataset (load it "
                "without streaming=True) or set use_teacher_cache=false (the teacher then runs on the fixed view "
                "every step)"
            )
        collator = trainer.build_collator(args, train=True)
        # The main process computes and writes the cache; the others then read it.
        with trainer.accelerator.main_process_first():
            self.cache = load_or_build_cache(
                self.teacher,
                trainer.train_dataset,
                args.teacher_input,
                augmentation=collator.augmentation,
                cache_dir=args.teacher_cache_dir,
                topk=args.teacher_cache_topk,
                interpolation=collator.teacher_interpolation,
                image_column=args.image_column_name,
                temperature=args.temperature,
                ic_ens_crops=args.ic_ens_crops,
                seed=args.seed,
                batch_size=args.per_device_eval_batch_size,
                device=trainer.accelerator.device,
                label_names=trainer.label_names_,
                write=trainer.accelerator.is_main_process,
            )

    def __call__(self, batch: dict[str, Tensor], train: bool) -> ModelOutputs:
        if not train:
            return self.live(batch, train)
        if self.cache is None:
            raise RuntimeError("the teacher cache is not built yet (CachedTeacher.prepare was not called)")
        return ModelOutputs(self.cache.lookup(batch[SAMPLE_IDS]))

    def label(self, views: dict[str, Tensor]) -> Tensor:
        return self.live.label(views)

    def set_feature_tap(self, tap: Any) -> None:
        self.live.set_feature_tap(tap)  # evaluation runs the live teacher

    def exports(self) -> dict[str, Any]:
        return {"teacher_cache": self.cache}
