"""Data-path speed: rendered views per second per CPU core, hf_distill beside timm and torchvision v2.

When a label bank or the fixed-teacher cache removes the teacher forward, the GPU is fed by the collator,
so its speed per CPU core decides how many loader workers a run needs. This script builds a ``datasets``
dataset of JPEG-encoded images of realistic sizes (crops of scikit-learn's two sample photographs,
re-encoded at quality 90, three in four landscape 500x375 and one in four portrait 375x500 by default)
and, for every teacher-input mode, measures in one process, variants interleaved (the order reversed on
every other repeat, so background load hits all alike), the fastest of the repeats (other work on a shared
machine only slows a run down, so the fastest is the least disturbed; every run's time is in ``--jsonl``):

* ``collator``: hf_distill's training collator on dataset rows fetched beforehand (decode deferred, as
  the trainer stores them);
* ``loader``: the trainer's own train dataloader (``DistillationTrainer(...).get_train_dataloader()``, tiny
  models): dataset rows, sampler, collator, one epoch;
* ``timm``: ``timm.data.create_transform(size, is_training=True, use_prefetcher=True)`` (uint8 output, the
  same crop-scale/ratio ranges, flips, no colour jitter) on PIL-decoded images, one transform per view;
* ``tv``: torchvision v2, ``decode_jpeg`` + ``RandomResizedCrop`` + ``RandomHorizontalFlip`` on uint8
  tensors (``v2.Compose`` of the transform classes), fed the *same* crop boxes (edges rounded to whole
  pixels, as both crop) and flips as hf_distill's views; ``tv-fn``: the same calls through
  ``torchvision.transforms.v2.functional`` without the transform classes (a floor for torchvision);
* ``tv-mix`` (modes that mix): ``tv`` followed by the mixing torchvision offers, ``ToDtype`` to fp32 then
  ``v2.MixUp`` on the batch (one draw for every view key), or for the label-bank replay the same fp32 blend
  of each view with its partner's: the work hf_distill's collator does too;
* ``tv-draw``: ``tv`` (with ``tv-mix``'s mixing where the mode mixes), but ``RandomResizedCrop`` draws its
  own boxes (``get_params``, the mode's scale and ratio ranges), as a torchvision pipeline does: the cost of
  drawing the parameters, which hf_distill's collator pays too, included;
* ``tv-loader``: torchvision's own train loader, the ``tv-draw`` transforms (drawing their own boxes, and
  ``tv-mix`` mixing where the mode mixes) as the ``collate_fn`` of a ``torch.utils.data.DataLoader`` over
  the same ``datasets`` rows and batch size: what a user writing the loop with torchvision alone would run,
  beside ``loader``.

Every baseline decodes each image once and renders the same views as hf_distill (each at its own
resolution); batches are stacked as a DataLoader's default collate would. "views" counts every view a
variant renders (the label-bank replay's mixing partner included, which the baselines render from the
partner's own image). For the modes without mixing the script also checks that hf_distill's first batch
holds exactly torchvision's views of the same boxes (samples decoded at full scale; libjpeg's DCT scaling,
used on large images, is hf_distill's alone). One thread (``torch.set_num_threads(1)``), so views/s is per
core; ``--workers`` adds runs of the trainer's loader with worker processes (views/s of the whole loader,
and per worker).

    .venv/bin/python benchmarks/dataloader.py                       # writes benchmarks/results/dataloader.md
    .venv/bin/python benchmarks/dataloader.py --workers 1 2 --images 512
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# name: (teacher_input, teacher image sizes (None: no teacher view), mixing, label bank replay)
MODES: dict[str, dict[str, Any]] = {
    "fix/rs (cache)": dict(teacher_input="fix/rs", crop="rs", teachers=[224], cache=True),
    "same/ic": dict(teacher_input="same/ic", teachers=[224]),
    "ind/ic": dict(teacher_input="ind/ic", teachers=[224]),
    "funmatch (mixup)": dict(teacher_input="funmatch", teachers=[224], mixup=1.0),
    "label-bank replay (funmatch)": dict(teacher_input="funmatch", teachers=[224], mixup=1.0, bank=True),
    "ensemble 224+384 (funmatch)": dict(teacher_input="funmatch", teachers=[224, 384], mixup=1.0),
}
LABELS = [str(i) for i in range(10)]


# ------------------------------------------------------------------------------------------------ data
def make_dataset(num_images: int, width: int, height: int, seed: int = 0, quality: int = 90):
    """JPEG-encoded crops of scikit-learn's sample photographs in a ``datasets.Dataset`` (image, label)."""
    import datasets
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    encoded = []
    for i in range(num_images):
        w, h = (width, height) if i % 4 else (height, width)
        photo = photos[i % len(photos)]
        side = rng.uniform(0.5, 1.0)
        ch = int(min(photo.height, photo.width * h / w) * side)
        cw = int(ch * w / h)
        x0, y0 = rng.integers(0, photo.width - cw + 1), rng.integers(0, photo.height - ch + 1)
        image = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=LABELS)})
    return datasets.Dataset.from_dict(
        {"image": encoded, "label": [i % len(LABELS) for i in range(num_images)]}, features=features
    )


def tiny_model(seed: int):
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=len(LABELS))
    model.pretrained_cfg = dict(model.pretrained_cfg, label_names=list(LABELS))
    return model


def build_trainer(mode: dict[str, Any], dataset, work: Path, batch_size: int, workers: int = 0, bank=None):
    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.hub import PreprocessSpec, save_student

    teachers = []
    for size in mode["teachers"]:
        directory = work.parent / f"teacher-{size}"  # shared by every mode (a label bank names its teacher)
        if not directory.exists():
            save_student(
                tiny_model(1), directory, label_names=LABELS, preprocess=PreprocessSpec(image_size=size)
            )
        teachers.append(str(directory))
    args = DistillationConfig(
        output_dir=str(work / "out"),
        image_size=224,
        teacher_model_name_or_path=teachers if len(teachers) > 1 else teachers[0],
        teacher_image_sizes=mode["teachers"] if len(teachers) > 1 else None,
        teacher_input=mode["teacher_input"],
        crop=mode.get("crop", "ic"),
        crop_scale=[0.08, 1.0],
        hflip=0.5,
        mixup_alpha=mode.get("mixup", 0.0),
        mix_prob=1.0,
        alpha=1.0,
        interpolation="bilinear",
        use_teacher_cache=bool(mode.get("cache")),
        teacher_cache_dir=str(work / "cache"),
        teacher_label_bank=bank,
        label_bank_records=2,
        per_device_train_batch_size=batch_size,
        dataloader_num_workers=workers,
        dataloader_pin_memory=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return DistillationTrainer(model=tiny_model(0), args=args, train_dataset=dataset)


def make_bank(mode: dict[str, Any], dataset, work: Path, batch_size: int) -> str:
    from hf_distill.label_bank import generate_for_trainer

    path = work / "bank"
    if not path.exists():
        trainer = build_trainer(mode, dataset, work, batch_size)
        generate_for_trainer(trainer, dataset, path, progress=False)
    return str(path)


# ------------------------------------------------------------------------------------------- baselines
def planned_views(
    collator, rows: list[dict[str, Any]]
) -> list[list[tuple[tuple[float, ...], bool, int, int]]]:
    """Per sample, the (box, flip, size, source image position) of every view hf_distill's collator renders:
    the views it hands to the models and, for a label-bank replay, the mixing partner's view."""
    from hf_distill.label_bank import replay_record

    positions = {int(row["sample_id"]): i for i, row in enumerate(rows)}
    plans = []
    for position, row in enumerate(rows):
        sample_id = int(row["sample_id"])
        image = Image.open(io.BytesIO(row["image"]["bytes"]))
        bank = getattr(collator, "bank", None)
        if bank is not None:
            chosen = replay_record(collator.seed, collator.epoch, sample_id, bank.num_records)
            record = bank.record(bank.row(sample_id, chosen))
            plan = [(tuple(record.box), record.flip, collator.student_size, position)]
            if record.mixed:
                partner = positions[record.partner_id]
                plan.append((tuple(record.partner_box), record.partner_flip, collator.student_size, partner))
            plans.append(plan)
            continue
        student, teacher = collator.view_params(sample_id, *image.size)
        views = [(student.box, student.flip, collator.student_size, position)]
        if collator.emits_teacher_view:
            views.append((teacher.box, teacher.flip, collator.teacher_size, position))
        views += [(teacher.box, teacher.flip, size, position) for size in collator.active_extra_sizes]
        plans.append(views)
    return plans


def whole_pixels(box: tuple[float, ...]) -> tuple[int, int, int, int]:
    """(top, left, height, width) in whole pixels, as torchvision's RandomResizedCrop crops (edges rounded
    half up, as hf_distill's ``pixel_box``)."""
    left, top = math.floor(box[0] + 0.5), math.floor(box[1] + 0.5)
    return top, left, max(1, math.floor(box[3] + 0.5) - top), max(1, math.floor(box[2] + 0.5) - left)


def tv_view(image: torch.Tensor, box, flip: bool, size: int) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    top, left, height, width = whole_pixels(box)
    view = F.resized_crop(image, top, left, height, width, [size, size], antialias=True)
    return F.horizontal_flip(view) if flip else view


def check_same_pixels(collator, rows, images: list[bytes], plans, batch_size: int) -> dict[str, int]:
    """How many samples of hf_distill's first batch hold exactly torchvision's views of the same boxes
    (``same``), of those decoded at full scale (``full``); ``reduced``: samples whose views allowed libjpeg's
    DCT scaling, which torchvision does not do. Modes without mixing (with mixing views are blended)."""
    from torchvision.io import decode_jpeg

    from hf_distill.collators import jpeg_reduction

    batch = collator(rows[:batch_size])
    keys = ["pixel_values"]
    keys += ["teacher_pixel_values"] if collator.emits_teacher_view else []
    keys += [f"teacher_pixel_values_{size}" for size in collator.active_extra_sizes]
    counts = {"same": 0, "full": 0, "reduced": 0}
    for i, plan in enumerate(plans[:batch_size]):
        if jpeg_reduction([(box, size, collator.student_interpolation) for box, _, size, _ in plan]) > 1:
            counts["reduced"] += 1
            continue
        image = decode_jpeg(torch.frombuffer(bytearray(images[i]), dtype=torch.uint8))
        counts["full"] += 1
        counts["same"] += all(
            torch.equal(batch[key][i], tv_view(image, box, flip, size))
            for key, (box, flip, size, _) in zip(keys, plan)
        )
    return counts


class TorchvisionViews:
    """torchvision's views of planned boxes, a batch at a time: decode each image once, crop, resize, flip,
    stack per view key; ``mix="batch"``: then ``v2.MixUp`` on the batch (``ToDtype`` to fp32 first, as it
    needs; every view key with the same parameters); ``mix="partner"``: each sample's view blended with its
    partner's (the label-bank replay), the same fp32 operations. ``draw``: ``RandomResizedCrop`` draws its
    own box for each planned one (``get_params`` with the mode's scale and ratio ranges; the whole image for
    ``crop="rs"``), as a torchvision pipeline does; a box shared by several views stays shared."""

    def __init__(self, functional: bool, mix: str | None = None, draw: tuple | None = None):
        from torchvision.transforms import v2

        class SameCrop(v2.RandomResizedCrop):  # RandomResizedCrop, fed the box instead of drawing one
            def make_params(self, flat_inputs):
                top, left, height, width = self.box
                return dict(top=top, left=left, height=height, width=width)

        self.functional, self.mix, self.crop_class, self.draw = functional, mix, SameCrop, draw
        self.mixup = v2.MixUp(alpha=1.0, num_classes=len(LABELS))
        self.transforms: dict[int, tuple[Any, Any]] = {}

    def drawn_box(self, image: torch.Tensor) -> tuple[float, float, float, float]:
        """A box torchvision draws for ``image`` (``draw``), as (x0, y0, x1, y1) in whole pixels."""
        from torchvision.transforms import v2

        scale, ratio = self.draw
        if scale is None:  # crop="rs": the whole image
            return (0.0, 0.0, float(image.shape[-1]), float(image.shape[-2]))
        top, left, height, width = v2.RandomResizedCrop.get_params(image, list(scale), list(ratio))
        return (float(left), float(top), float(left + width), float(top + height))

    def view(self, image: torch.Tensor, box, flip: bool, size: int) -> torch.Tensor:
        from torchvision.transforms import v2

        if self.functional:
            return tv_view(image, box, flip, size)
        if size not in self.transforms:
            crop = self.crop_class(size, antialias=True)
            self.transforms[size] = (crop, v2.Compose([crop, v2.RandomHorizontalFlip(p=1.0)]))
        crop, with_flip = self.transforms[size]
        crop.box = whole_pixels(box)
        return with_flip(image) if flip else crop(image)

    def batch(self, plans, image_bytes) -> int:
        from torchvision import tv_tensors
        from torchvision.io import decode_jpeg
        from torchvision.transforms.v2 import functional as F

        stacks: dict[int, list[torch.Tensor]] = {}
        for plan in plans:
            decoded, drawn = {}, {}
            for position, (box, flip, size, source) in enumerate(plan):
                if source not in decoded:  # each image decoded once per sample (a partner: its own image)
                    data = bytearray(image_bytes(source))
                    decoded[source] = decode_jpeg(torch.frombuffer(data, dtype=torch.uint8))
                if self.draw is not None:
                    key = (source, tuple(box))
                    if key not in drawn:
                        drawn[key] = self.drawn_box(decoded[source])
                    box = drawn[key]
                stacks.setdefault(position, []).append(self.view(decoded[source], box, flip, size))
        batches = [torch.stack(stack) for stack in stacks.values()]
        if self.mix == "batch":
            floats = tuple(tv_tensors.Image(F.to_dtype(b, torch.float32, scale=True)) for b in batches)
            self.mixup(floats, torch.zeros(len(batches[0]), dtype=torch.long))  # one lam for every view key
        elif self.mix == "partner" and len(batches) > 1:
            own, partner = (F.to_dtype(b, torch.float32, scale=True) for b in batches[:2])
            lam = torch.rand(len(partner), 1, 1, 1)
            own[: len(partner)].mul_(lam).add_(partner.mul(1.0 - lam))
        return sum(len(b) for b in batches)


def tv_pipeline(
    images: list[bytes], plans, batch_size: int, functional: bool, mix: str | None = None, draw=None
) -> int:
    """:class:`TorchvisionViews` on the images' bytes held in memory."""
    views = TorchvisionViews(functional, mix, draw)
    return sum(
        views.batch(plans[start : start + batch_size], images.__getitem__)
        for start in range(0, len(plans), batch_size)
    )


def tv_loader(dataset, images: list[bytes], plans, batch_size: int, mix: str | None = None, draw=None) -> int:
    """:class:`TorchvisionViews` (transform classes, drawing their own boxes) as a ``DataLoader``'s collate
    function over the same ``datasets`` rows the trainer's loader reads (shuffled, no workers): torchvision's
    own train loader, end to end."""
    views = TorchvisionViews(False, mix, draw)

    def collate(rows: list[dict[str, Any]]) -> int:
        own = {int(row["sample_id"]): row["image"]["bytes"] for row in rows}
        return views.batch(
            [plans[int(row["sample_id"])] for row in rows], lambda source: own.get(source) or images[source]
        )

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )
    return sum(loader)


def timm_pipeline(images: list[bytes], plans, batch_size: int, mode: dict[str, Any]) -> int:
    from timm.data import create_transform

    full = mode.get("crop") == "rs"
    transforms: dict[int, Any] = {}
    views = 0
    for start in range(0, len(images), batch_size):
        stacks: dict[int, list[torch.Tensor]] = {}
        for plan in plans[start : start + batch_size]:
            opened = {}
            for position, (_, _, size, source) in enumerate(plan):
                if source not in opened:
                    opened[source] = Image.open(io.BytesIO(images[source])).convert("RGB")
                image = opened[source]
                if size not in transforms:
                    transforms[size] = create_transform(
                        size,
                        is_training=True,
                        scale=(1.0, 1.0) if full else (0.08, 1.0),
                        hflip=0.5,
                        color_jitter=0.0,
                        interpolation="bilinear",
                        use_prefetcher=True,
                    )
                stacks.setdefault(position, []).append(torch.from_numpy(np.asarray(transforms[size](image))))
        for stack in stacks.values():
            torch.stack(stack)
            views += len(stack)
    return views


# ------------------------------------------------------------------------------------------- measuring
def count_views(batch: dict[str, torch.Tensor]) -> int:
    return sum(
        int(v.shape[0])
        for k, v in batch.items()
        if k == "pixel_values" or k.startswith("teacher_pixel_values")
    )


def run_collator(collator, rows, batch_size: int) -> int:
    return sum(count_views(collator(rows[i : i + batch_size])) for i in range(0, len(rows), batch_size))


def run_loader(trainer) -> int:
    return sum(count_views(batch) for batch in trainer.get_train_dataloader())


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    views = fn()
    return time.perf_counter() - start, views


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="extra loader runs with workers")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dataloader.md"))
    parser.add_argument("--jsonl", default=None, help="also append one JSON line per mode here")
    parser.add_argument("--label", default="", help="a note for the report's header (e.g. the code version)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from hf_distill.reliability import defer_image_decoding

    dataset = make_dataset(args.images, args.width, args.height)
    images = [value["bytes"] for value in defer_image_decoding(dataset, "image")["image"]]
    work = Path(tempfile.mkdtemp(prefix="hf_distill_dataloader_"))
    results = []
    for name in args.modes:
        mode = MODES[name]
        slug = name.split(" ")[0].replace("/", "_")
        bank = make_bank(mode, dataset, work / f"{slug}-bank", args.batch_size) if mode.get("bank") else None
        loaders = {
            w: build_trainer(mode, dataset, work / f"{slug}-w{w}", args.batch_size, workers=w, bank=bank)
            for w in [0, *args.workers]
        }
        trainer = loaders[0]
        collator = trainer.data_collator
        collator.set_epoch(0)
        rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
        plans = planned_views(collator, rows)
        variants = {
            "collator": partial(run_collator, collator, rows, args.batch_size),
            "loader": partial(run_loader, loaders[0]),
            "timm": partial(timm_pipeline, images, plans, args.batch_size, mode),
            "tv": partial(tv_pipeline, images, plans, args.batch_size, functional=False),
            "tv-fn": partial(tv_pipeline, images, plans, args.batch_size, functional=True),
        }
        mix = ("partner" if mode.get("bank") else "batch") if mode.get("mixup") else None
        crop_ranges = (tuple(trainer.args.crop_scale), tuple(trainer.args.crop_ratio))
        draw = (None, None) if mode.get("crop") == "rs" else crop_ranges  # the ranges hf_distill draws from
        variants["tv-draw"] = partial(
            tv_pipeline, images, plans, args.batch_size, functional=False, mix=mix, draw=draw
        )
        variants["tv-loader"] = partial(
            tv_loader, trainer.train_dataset, images, plans, args.batch_size, mix=mix, draw=draw
        )
        if mix:
            variants["tv-mix"] = partial(
                tv_pipeline, images, plans, args.batch_size, functional=False, mix=mix
            )
        for w in args.workers:
            variants[f"loader-w{w}"] = partial(run_loader, loaders[w])
        for fn in variants.values():  # warm-up: imports, caches, first-call allocations
            fn()
        seconds: dict[str, list[float]] = {k: [] for k in variants}
        views: dict[str, int] = {}
        order = list(variants)
        for repeat in range(args.repeats):
            for key in order if repeat % 2 == 0 else order[::-1]:
                elapsed, count = timed(variants[key])
                seconds[key].append(elapsed)
                views[key] = count
        rendered = sum(len(plan) for plan in plans)  # every variant renders the same views
        rate = {k: rendered / min(v) for k, v in seconds.items()}  # the least disturbed repeat
        result = {
            "mode": name,
            "views_per_image": rendered / len(rows),
            "handed_per_image": views["collator"] / len(rows),
            "views_per_s": rate,
            "same_pixels_as_tv": None
            if mode.get("mixup")
            else check_same_pixels(collator, rows, images, plans, args.batch_size),
            "runs_s": seconds,
        }
        results.append(result)
        print(json.dumps({"mode": name, **{k: round(v, 1) for k, v in rate.items()}}), flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as handle:
                handle.write(json.dumps(result) + "\n")
    write_report(args, results, argv)


def write_report(args, results, argv) -> None:
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dataloader.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    lines = [
        "# Data path: rendered views per second per CPU core",
        "",
        f"Command: `{command.strip()}`" + (f" ({args.label})" if args.label else ""),
        "",
        f"{args.images} JPEG images (quality 90; 3 in 4 {args.width}x{args.height}, 1 in 4 "
        f"{args.height}x{args.width}) in a `datasets` dataset, 224 px views (384 px for the ensemble's second "
        f"teacher view), batch {args.batch_size}, one thread, variants interleaved, fastest of {args.repeats} "
        f"repeats. {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), Python "
        f"{platform.python_version()}, torch {torch.__version__}.",
        "",
        "Rendered views/s per core (every view a variant crops and resizes, the label-bank replay's mixing "
        "partner included). tv v2: torchvision's transform classes on the same boxes, images in memory; for the "
        "modes that mix, tv v2 + mix also mixes as torchvision does (`ToDtype` to fp32, then `v2.MixUp`, or the "
        "same blend with the replay's partner), the work hf_distill's collator does too. tv own draws: tv v2 (+ mix) "
        "with `RandomResizedCrop` drawing its own boxes (`get_params`, the same scale and ratio ranges). "
        "tv loader: tv own draws (+ mix) as the collate function of a `DataLoader` over the same `datasets` "
        "rows the trainer's loader reads: torchvision's own train pipeline, end to end. "
        "\"= tv pixels\": of the first batch's samples decoded at full scale, how many hold exactly torchvision's "
        'views of the same boxes (modes without mixing; "reduced": samples decoded with libjpeg\'s DCT '
        "scaling, which torchvision does not do).",
        "",
        "| mode | views/image | collator | trainer loader | timm | tv v2 | tv functional | tv v2 + mix | tv own draws (+ mix) | tv loader | collator / tv v2 (+ mix) | loader / tv own draws | loader / tv loader | loader / tv v2 | = tv pixels |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v = r["views_per_s"]
        check = r["same_pixels_as_tv"]
        same = "(mixed)" if check is None else f"{check['same']}/{check['full']}"
        if check and check["reduced"]:
            same += f" (+{check['reduced']} reduced)"
        work = v.get("tv-mix", v["tv"])
        mixed = f"{v['tv-mix']:.0f}" if "tv-mix" in v else "-"
        lines.append(
            f"| {r['mode']} | {r['views_per_image']:.0f} | {v['collator']:.0f} | {v['loader']:.0f} | {v['timm']:.0f} | "
            f"{v['tv']:.0f} | {v['tv-fn']:.0f} | {mixed} | {v['tv-draw']:.0f} | {v['tv-loader']:.0f} | "
            f"{v['collator'] / work:.2f}x | {v['loader'] / v['tv-draw']:.2f}x | {v['loader'] / v['tv-loader']:.2f}x | "
            f"{v['loader'] / v['tv']:.2f}x | {same} |"
        )
    if args.workers:
        lines += [
            "",
            "Trainer loader with worker processes (views/s of the loader; per worker in brackets):",
            "",
        ]
        lines += ["| mode | 0 workers | " + " | ".join(f"{w} workers" for w in args.workers) + " |"]
        lines += ["|---|---|" + "---|" * len(args.workers)]
        for r in results:
            v = r["views_per_s"]
            lines.append(
                f"| {r['mode']} | {v['loader']:.0f} | "
                + " | ".join(f"{v[f'loader-w{w}']:.0f} ({v[f'loader-w{w}'] / w:.0f})" for w in args.workers)
                + " |"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
