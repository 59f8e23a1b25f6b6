"""The fast rendering path keeps the collator's guarantees: the same pixels for a sample's (seed, epoch, id)
whatever the batch or worker, one whole-pixel box shared exactly by every view at every resolution
(torchvision's resized_crop), uint8, JPEGs decoded to PIL's pixels, reduced JPEG decoding within a stated
tolerance of full decoding, mixing equal to its fp32 formula, corrupt images named."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hf_distill.collators import (
    JPEG_REDUCING_GAP,
    AugmentationConfig,
    DistillationCollator,
    ViewParams,
    eval_box,
    jpeg_reduction,
    pixel_box,
    render_eval_view,
    render_view,
    scale_view,
)
from hf_distill.images import JpegSource, finish_pixels, load_pixels, open_source
from hf_distill.mixing import MixConfig, apply_mix, boxes_to_pixels, sample_mix_params
from hf_distill.reliability import finish_image, load_image, open_image

# Reduced decoding vs full decoding of the same view, in 8-bit levels (measured on detailed photographs:
# mean about 0.3, worst view 0.9; worst pixel 11).
REDUCED_MEAN_TOLERANCE = 1.5
REDUCED_MAX_TOLERANCE = 32


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A detailed photograph (scikit-learn's samples, tiled with mirroring so no detail is interpolated)."""
    from sklearn.datasets import load_sample_images

    source = load_sample_images().images[seed % 2]
    reps = (-(-height // source.shape[0]), -(-width // source.shape[1]), 1)
    tiled = np.tile(np.concatenate([source, source[:, ::-1]], axis=1), reps)[:height, :width]
    return Image.fromarray(np.ascontiguousarray(tiled))


def jpeg(image: Image.Image, **kwargs) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **kwargs)
    return {"bytes": buffer.getvalue(), "path": None}


def reference_view(image: Image.Image, params: ViewParams, size: int, interpolation: str) -> torch.Tensor:
    """A training view by definition: the box's edges rounded to whole pixels, torchvision's ``resized_crop``
    of the uint8 image (anti-aliased), then the flip."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mode = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST_EXACT"}[interpolation]
    x0, y0, x1, y1 = (int(np.floor(v + 0.5)) for v in params.box)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    view = F.resized_crop(
        tensor, y0, x0, y1 - y0, x1 - x0, [size, size], InterpolationMode[mode], antialias=True
    )
    return view.flip(-1) if params.flip else view


def reference_eval_view(image: Image.Image, box, size: int, interpolation: str) -> torch.Tensor:
    """The evaluation view as first written: one PIL resize of the (sub-pixel) box, HWC -> CHW."""
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[interpolation]
    resized = image.resize((size, size), resample=resample, box=box)
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def rows():
    """JPEG rows of two sizes (landscape and portrait), as the trainer stores them (decode deferred)."""
    return [
        {
            "image": jpeg(photo(*((200, 150) if i % 3 else (150, 200)), seed=i)),
            "label": i % 10,
            "sample_id": 100 + i,
        }
        for i in range(10)
    ]


def reference_batch(collator: DistillationCollator, rows: list[dict]) -> dict[int, list[torch.Tensor]]:
    """Per sample id, every view rendered from a full decode, computed here independently of the batch."""
    out = {}
    for row in rows:
        image = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
        student, teacher = collator.view_params(row["sample_id"], *image.size)
        views = [reference_view(image, student, collator.student_size, collator.student_interpolation)]
        if collator.emits_teacher_view:
            views.append(
                reference_view(image, teacher, collator.teacher_size, collator.teacher_interpolation)
            )
        views += [
            reference_view(image, teacher, size, collator.teacher_interpolation)
            for size in collator.active_extra_sizes
        ]
        out[row["sample_id"]] = views
    return out


def batch_views(collator: DistillationCollator, batch: dict) -> dict[int, list[torch.Tensor]]:
    keys = ["pixel_values"]
    keys += ["teacher_pixel_values"] if collator.emits_teacher_view else []
    keys += [f"teacher_pixel_values_{s}" for s in collator.active_extra_sizes]
    return {int(s): [batch[k][i] for k in keys] for i, s in enumerate(batch["sample_ids"])}


# --------------------------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_render_view_equals_torchvisions_resized_crop_of_the_whole_pixel_box(interpolation):
    image = photo(211, 157)
    rng = np.random.default_rng(0)
    for _ in range(20):
        w, h = rng.uniform(3, 211), rng.uniform(3, 157)
        x0, y0 = rng.uniform(0, 211 - w), rng.uniform(0, 157 - h)
        params = ViewParams((x0, y0, x0 + w, y0 + h), bool(rng.integers(2)))
        size = int(rng.choice([7, 32, 57, 96]))
        view = render_view(image, params, size, interpolation)
        assert view.dtype == torch.uint8 and view.shape == (3, size, size) and view.is_contiguous()
        assert torch.equal(view, reference_view(image, params, size, interpolation))
        slot = torch.zeros(2, 3, size, size, dtype=torch.uint8)
        render_view(image, params, size, interpolation, out=slot[1])
        assert torch.equal(slot[1], view) and not slot[0].any()
        pixels = torch.from_numpy(np.array(image))  # the (H, W, 3) tensor the collator decodes to
        assert torch.equal(render_view(pixels, params, size, interpolation), view)


def test_views_of_a_shared_box_cover_exactly_its_pixels_at_every_resolution():
    """A box whose pixels are all one colour renders that colour at every size, flipped or not: nothing of
    the surroundings enters a view, and no view is shifted against another by rounding."""
    rng = np.random.default_rng(4)
    for _ in range(10):
        array = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        x0, y0 = int(rng.integers(0, 100)), int(rng.integers(0, 60))
        x1, y1 = x0 + int(rng.integers(1, 160 - x0)), y0 + int(rng.integers(1, 120 - y0))
        colour = rng.integers(0, 256, 3, dtype=np.uint8)
        array[y0:y1, x0:x1] = colour
        jitter = rng.uniform(-0.49, 0.49, 4)  # sub-pixel sampled edges round to the same pixels
        params = ViewParams(
            tuple(float(v) for v in np.array([x0, y0, x1, y1]) + jitter), bool(rng.integers(2))
        )
        for size in (7, 32, 224, 384):
            for interpolation in ("bilinear", "bicubic", "nearest"):
                view = render_view(Image.fromarray(array), params, size, interpolation)
                assert torch.equal(view, torch.from_numpy(colour).view(3, 1, 1).expand(3, size, size))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_render_eval_view_is_pils_resize_of_the_sub_pixel_box(interpolation):
    for width, height in ((211, 157), (157, 211), (64, 64)):
        image = photo(width, height)
        for size in (7, 32, 57):
            box = eval_box(width, height)
            view = render_eval_view(image, box, size, interpolation)
            assert view.dtype == torch.uint8 and view.shape == (3, size, size) and view.is_contiguous()
            assert torch.equal(view, reference_eval_view(image, box, size, interpolation))


@pytest.mark.parametrize(
    "teacher_input, extra",
    [("same/ic", ()), ("ind/ic", ()), ("fix/rs", ()), ("funmatch", ()), ("same/ic", (24, 40))],
)
def test_collator_pixels_follow_the_sample_not_the_batch(rows, teacher_input, extra):
    collator = DistillationCollator(
        student_size=32,
        teacher_size=24 if extra else 48,
        teacher_input=teacher_input,
        augmentation=AugmentationConfig(crop="ic" if teacher_input != "fix/rs" else "rs"),
        extra_teacher_sizes=extra,
        mix_config=MixConfig(mixup_alpha=0.0),  # mixing is batch-level; views are per sample
        seed=3,
        epoch=2,
    )
    expected = reference_batch(collator, rows)
    whole = batch_views(collator, collator(rows))
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    pieces = {}
    for start in range(0, len(rows), 3):
        pieces.update(batch_views(collator, collator(shuffled[start : start + 3])))
    for sample_id, views in expected.items():
        for got_whole, got_piece, want in zip(whole[sample_id], pieces[sample_id], views):
            assert torch.equal(got_whole, want) and torch.equal(got_piece, want)


def test_collator_pixels_do_not_depend_on_the_worker_count(rows):
    import datasets

    data = datasets.Dataset.from_list(
        rows,
        features=datasets.Features(
            {
                "image": datasets.Image(decode=False),
                "label": datasets.Value("int64"),
                "sample_id": datasets.Value("int64"),
            }
        ),
    )
    collator = DistillationCollator(student_size=32, teacher_size=48, teacher_input="ind/ic", seed=5, epoch=1)
    seen = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=collator, num_workers=workers)
        seen[workers] = {}
        for batch in loader:
            seen[workers].update(batch_views(collator, batch))
    expected = reference_batch(collator, rows)
    for sample_id, views in expected.items():
        for workers in (0, 2):
            assert all(torch.equal(a, b) for a, b in zip(seen[workers][sample_id], views))


# ------------------------------------------------------------------------------------ reduced decoding
def test_reduction_rule():
    box = (10.0, 20.0, 10.0 + 900.0, 20.0 + 700.0)  # shorter side 700
    assert jpeg_reduction([(box, 100, "bilinear")]) == 2  # 700 >= 2 * 2 * 100 but < 2 * 4 * 100 (gap 2)
    assert jpeg_reduction([(box, 40, "bicubic")]) == 8
    assert jpeg_reduction([(box, 40, "bilinear"), (box, 100, "bilinear")]) == 2  # every view must allow it
    assert jpeg_reduction([(box, 40, "nearest")]) == 1
    assert jpeg_reduction([(box, 351, "bilinear")]) == 1
    assert JPEG_REDUCING_GAP == 2.0
    assert scale_view(ViewParams((8.0, 4.0, 20.0, 16.5), True), 4) == ViewParams((2.0, 1.0, 5.0, 4.125), True)


@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 and 4:2:0 chroma
def test_reduced_jpeg_decoding_stays_within_tolerance_of_full_decoding(subsampling):
    image = photo(1280, 960)
    value = jpeg(image, subsampling=subsampling)
    full = load_image(value, 0)
    rng = np.random.default_rng(subsampling)
    worst_mean = worst_max = 0.0
    for reduction in (2, 4, 8):
        reduced, applied = finish_image(open_image(value, 0), 0, reduction=reduction)
        assert applied == reduction and reduced.size == (1280 // reduction, 960 // reduction)
        for size in (32, 56):
            for _ in range(4):
                side = rng.uniform(JPEG_REDUCING_GAP * reduction * size, 960)
                w, h = side * rng.uniform(1.0, 1.3), side
                x0, y0 = rng.uniform(0, 1280 - w), rng.uniform(0, 960 - h)
                params = ViewParams((x0, y0, x0 + w, y0 + h), bool(rng.integers(2)))
                assert jpeg_reduction([(params.box, size, "bilinear")]) >= reduction
                # The reduced view covers whole pixels of the reduced image: a box within r / 2 source pixels
                # of the sampled one (at most 1/4 of an output pixel, by the reducing gap) ...
                scaled = scale_view(params, reduction)
                covered = [reduction * c for c in pixel_box(scaled.box, *reduced.size)]
                assert all(abs(c - b) <= reduction / 2 for c, b in zip(covered, params.box))
                # ... and shows what full decoding shows of that box.
                same_pixels = ViewParams(tuple(float(c) for c in covered), params.flip)
                diff = (
                    (render_view(reduced, scaled, size).int() - render_view(full, same_pixels, size).int())
                    .abs()
                    .float()
                )
                worst_mean, worst_max = max(worst_mean, diff.mean().item()), max(worst_max, diff.max().item())
    assert worst_mean <= REDUCED_MEAN_TOLERANCE and worst_max <= REDUCED_MAX_TOLERANCE


def test_collator_uses_reduced_decoding_for_large_jpegs_and_stays_close():
    rows = [{"image": jpeg(photo(1280, 960, seed=i)), "sample_id": i} for i in range(4)]
    collator = DistillationCollator(
        student_size=48,
        teacher_size=None,
        teacher_input="fix/rs",
        augmentation=AugmentationConfig(crop="rs", hflip=0.5),
    )
    batch = collator(rows)
    for i, row in enumerate(rows):
        full = load_image(row["image"], i)
        student, _ = collator.view_params(i, *full.size)
        assert jpeg_reduction([(student.box, 48, "bilinear")]) == 8  # 960 / 48 = 20 >= 2 * 8
        diff = (batch["pixel_values"][i].int() - render_view(full, student, 48).int()).abs().float()
        assert diff.mean() <= REDUCED_MEAN_TOLERANCE and diff.max() <= REDUCED_MAX_TOLERANCE
    assert batch["pixel_values"].dtype == torch.uint8
    assert torch.equal(batch["pixel_values"], collator(rows[::-1])["pixel_values"].flip(0))


def test_decoded_and_non_jpeg_images_are_never_reduced():
    png = io.BytesIO()
    photo(400, 300).save(png, "PNG")
    for value in ({"bytes": png.getvalue(), "path": None}, photo(400, 300), np.asarray(photo(400, 300))):
        image, applied = finish_image(open_image(value, 0), 0, reduction=4)
        assert applied == 1 and image.size == (400, 300) and image.mode == "RGB"


# ------------------------------------------------------------------------------------------------ errors
def test_corrupt_images_are_reported_with_their_sample_id(rows):
    data = rows[0]["image"]["bytes"]
    truncated = {"image": {"bytes": data[: len(data) // 3] + b"\x00" * 64, "path": None}, "sample_id": 77}
    garbage = {"image": {"bytes": b"not an image at all", "path": None}, "sample_id": 78}
    collator = DistillationCollator(student_size=32, teacher_size=32, teacher_input="same/ic")
    for bad in (truncated, garbage):
        with pytest.raises(ValueError, match=f"sample_id={bad['sample_id']}"):
            collator([rows[1], bad])


# ------------------------------------------------------------------------------------------------ mixing
def reference_mix(params, x: torch.Tensor) -> torch.Tensor:
    """apply_mix's documented formula, batched: fp32 blend rounded half to even; boxes pasted."""
    partner = x[params.perm]
    w = params.lam.float().view(-1, *([1] * (x.ndim - 1)))
    blended = torch.round(w * x.float() + (1.0 - w) * partner.float()).clamp(0, 255).to(torch.uint8)
    out = torch.where(params.use_mixup.view_as(w), blended, x)
    pix = boxes_to_pixels(params.boxes, x.shape[-2], x.shape[-1])
    for i in range(x.shape[0]):
        if params.use_cutmix[i]:
            y0, x0, y1, x1 = pix[i].tolist()
            out[i, ..., y0:y1, x0:x1] = partner[i, ..., y0:y1, x0:x1]
    return out


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("batch_size", [1, 6, 7])
def test_uint8_mixing_equals_the_fp32_formula(mode, batch_size):
    config = MixConfig(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=0.8, mode=mode)
    for seed in range(4):
        params = sample_mix_params(batch_size, config, torch.Generator().manual_seed(seed))
        small = torch.randint(
            0, 256, (batch_size, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
        )
        large = torch.nn.functional.interpolate(small.float(), size=40).round().to(torch.uint8)
        got_small, got_large = apply_mix(params, small, large)
        assert torch.equal(got_small, reference_mix(params, small))
        assert torch.equal(got_large, reference_mix(params, large))
        assert got_small.dtype == torch.uint8 and not got_small.data_ptr() == small.data_ptr()


# ------------------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize(
    "variant",
    [dict(subsampling=2), dict(subsampling=0), dict(subsampling=1), dict(progressive=True), "L", "CMYK"],
    ids=["420", "444", "422", "progressive", "grey", "cmyk"],
)
def test_finish_pixels_gives_pils_rgb_pixels(variant):
    image = photo(203, 151)
    value = jpeg(image.convert(variant)) if isinstance(variant, str) else jpeg(image, **variant)
    source = open_source(value, 0)
    assert source.size == (203, 151)
    assert isinstance(source, JpegSource) == (variant != "CMYK")  # CMYK: PIL's conversion is the reference
    pixels, applied = finish_pixels(source, 0)
    expected = np.array(Image.open(io.BytesIO(value["bytes"])).convert("RGB"))
    assert applied == 1 and pixels.dtype == torch.uint8 and pixels.is_contiguous()
    assert torch.equal(pixels, torch.from_numpy(expected))


def test_finish_pixels_decodes_full_scale_jpegs_with_torchvision_and_the_rest_with_pil(monkeypatch):
    import hf_distill.images as images

    if images._tv_decode_jpeg is None:
        pytest.skip("this torchvision has no JPEG decoder")
    calls = []
    decoder = images._tv_decode_jpeg
    monkeypatch.setattr(images, "_tv_decode_jpeg", lambda *a, **k: calls.append(1) or decoder(*a, **k))
    value = jpeg(photo(96, 64))
    finish_pixels(open_source(value, 0), 0)
    assert len(calls) == 1
    png = io.BytesIO()
    photo(96, 64).save(png, "PNG")
    large = jpeg(photo(800, 600))
    for source, reduction in (
        (open_source({"bytes": png.getvalue(), "path": None}, 0), 1),
        (open_source(large, 0), 2),  # DCT scaling: PIL's draft
        (open_source(photo(96, 64), 0), 1),  # decoded already
        (open_image(value, 0), 1),  # opened by PIL already
    ):
        pixels, applied = finish_pixels(source, 0, reduction=reduction)
        assert applied == reduction and pixels.shape[2] == 3
    assert len(calls) == 1
    reduced, _ = finish_pixels(open_source(large, 0), 0, reduction=2)
    assert torch.equal(
        reduced, torch.from_numpy(np.array(finish_image(open_image(large, 0), 0, reduction=2)[0]))
    )


def test_jpeg_header_reads_the_frame_size_and_leaves_other_files_to_pil():
    from hf_distill.images import _jpeg_header

    for width, height in ((1, 1), (203, 151), (4000, 17)):
        data = jpeg(photo(width, height))["bytes"]
        assert _jpeg_header(data) == (width, height)
        assert _jpeg_header(data[:30]) is None  # the header cut short
    twelve_bit = bytearray(jpeg(photo(20, 10))["bytes"])
    frame = twelve_bit.index(b"\xff\xc0")
    twelve_bit[frame + 4] = 12
    assert _jpeg_header(bytes(twelve_bit)) is None
    mpo = io.BytesIO()
    photo(40, 30).save(mpo, "MPO", save_all=True, append_images=[photo(40, 30, seed=1)])
    assert _jpeg_header(mpo.getvalue()) is None
    assert not isinstance(open_source({"bytes": mpo.getvalue(), "path": None}, 0), JpegSource)
    assert _jpeg_header(b"\x89PNG\r\n\x1a\n") is None and _jpeg_header(b"") is None


def test_open_source_keeps_pils_decompression_bomb_rule(monkeypatch):
    value = jpeg(photo(64, 48))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48 // 2 - 1)
    with pytest.raises(ValueError, match="sample_id=9: .*DecompressionBombError.*MAX_IMAGE_PIXELS"):
        open_source(value, 9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48 - 1)
    with pytest.warns(Image.DecompressionBombWarning):
        open_source(value, 9)


def test_finish_pixels_leaves_truncated_jpegs_to_pil_when_the_user_allows_them(monkeypatch, tmp_path):
    from PIL import ImageFile

    data = jpeg(photo(320, 240))["bytes"]
    truncated = {"bytes": data[: len(data) // 2], "path": None}
    with pytest.raises(ValueError, match="sample_id=5: column 'image' cannot be decoded"):
        finish_pixels(open_source(truncated, 5), 5)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    pixels, _ = finish_pixels(open_source(truncated, 5), 5)
    assert pixels.shape == (240, 320, 3)
    path = tmp_path / "photo.jpg"  # a file on disk
    path.write_bytes(data)
    assert isinstance(open_source(str(path), 0), JpegSource)
    expected = torch.from_numpy(np.array(Image.open(path).convert("RGB")))
    assert torch.equal(load_pixels(str(path), 0), expected)
    assert torch.equal(load_pixels({"bytes": None, "path": str(path)}, 0), expected)


def test_sample_generator_streams_are_seedsequences_of_the_four_words():
    from hf_distill.collators import sample_generator

    for words in [(0, 0, 0, 0), (3, 2, 101, 1), (2**32 - 1, 7, 2**31, 5), (2**40 + 3, 1, 2**33, 0)]:
        expected = np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(words))))
        assert np.array_equal(sample_generator(*words).random(8), expected.random(8))
