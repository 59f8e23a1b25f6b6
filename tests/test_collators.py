"""Teacher-input modes of the collator: which pixels reach the student and the teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_distill.collators import (
    AugmentationConfig,
    DistillationCollator,
    parse_teacher_input,
    teacher_view_key,
    teacher_views,
)
from hf_distill.mixing import MixConfig

WIDTH, HEIGHT = 200, 160


def ramp_image() -> Image.Image:
    """Red = column index, green = row index: every pixel says where it came from."""
    xs, ys = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    array = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    return Image.fromarray(array, mode="RGB")


def rows(n: int, image: Image.Image | None = None) -> list[dict]:
    image = image if image is not None else ramp_image()
    return [{"image": image, "label": i % 10, "sample_id": i} for i in range(n)]


def collator(mode: str, crop: str = "ic", student: int = 16, teacher: int | None = 40, **kwargs):
    aug = AugmentationConfig(crop=crop, crop_scale=(0.2, 0.6), hflip=kwargs.pop("hflip", 0.0))
    return DistillationCollator(
        student_size=student, teacher_size=teacher, teacher_input=mode, augmentation=aug, **kwargs
    )


def box_centre(view: torch.Tensor) -> tuple[float, float]:
    """The box centre a ramp view shows: (mean red + 0.5, mean green + 0.5) in original pixels."""
    v = view.double()
    return float(v[0].mean()) + 0.5, float(v[1].mean()) + 0.5


def test_consistent_mode_sends_the_same_crop_box_to_both_views_at_their_own_resolutions():
    c = collator("same/ic")
    batch = c(rows(6))
    assert batch["pixel_values"].shape == (6, 3, 16, 16)
    assert batch["teacher_pixel_values"].shape == (6, 3, 40, 40)
    for i in range(6):
        student, _ = c.view_params(i, WIDTH, HEIGHT)
        x0, y0, x1, y1 = student.box
        expected = ((x0 + x1) / 2, (y0 + y1) / 2)
        for view in (batch["pixel_values"][i], batch["teacher_pixel_values"][i]):
            cx, cy = box_centre(view)
            assert abs(cx - expected[0]) < 1.5 and abs(cy - expected[1]) < 1.5
            # the view spans the box: its red range is the box width minus one output pixel
            red = view[0].double()
            span = (x1 - x0) * (1 - 1 / view.shape[-1])
            assert abs(float(red[:, -1].mean() - red[:, 0].mean()) - span) < 3.0


def test_independent_mode_gives_the_teacher_another_box():
    c = collator("ind/ic")
    batch = c(rows(8))
    gaps = [
        abs(box_centre(batch["pixel_values"][i])[0] - box_centre(batch["teacher_pixel_values"][i])[0])
        for i in range(8)
    ]
    assert max(gaps) > 10.0


def test_flip_is_shared_in_consistent_mode():
    c = collator("same/rc", crop="rc", hflip=1.0)
    batch = c(rows(2))
    for key in ("pixel_values", "teacher_pixel_values"):
        red = batch[key][0, 0].double()
        assert red[:, 0].mean() > red[:, -1].mean()  # flipped: red decreases left to right


def test_fixed_teacher_views_do_not_change_across_epochs_while_the_student_does():
    for mode, student_crop in (("fix/rs", "rs"), ("fix/cc", "rc")):
        c = collator(mode, crop="ic")
        assert c.mode.student_crop == student_crop  # the paper pairs each fixed teacher with this crop
        first = c(rows(4))
        c.set_epoch(5)
        later = c(rows(4))
        assert torch.equal(first["teacher_pixel_values"], later["teacher_pixel_values"])
        if mode == "fix/cc":
            assert not torch.equal(first["pixel_values"], later["pixel_values"])
            cx, cy = box_centre(first["teacher_pixel_values"][0])
            assert abs(cx - WIDTH / 2) < 1.5 and abs(cy - HEIGHT / 2) < 1.5
    assert parse_teacher_input("fix/ic_ens", "rs").student_crop == "ic"
    assert not parse_teacher_input("fix/ic_ens", "ic").needs_teacher_view
    assert "teacher_pixel_values" not in collator("fix/ic_ens")(rows(2))


def test_views_depend_on_sample_id_not_on_batch_composition():
    c = collator("same/ic")
    together = c(rows(6))
    alone = c([rows(6)[4]])
    assert torch.equal(together["pixel_values"][4], alone["pixel_values"][0])


def test_mixing_parameters_are_identical_for_student_and_teacher():
    values = [10, 60, 110, 160, 210, 250]
    images = [Image.new("RGB", (64, 48), (v, v, v)) for v in values]
    batch_rows = [{"image": im, "label": i, "sample_id": i} for i, im in enumerate(images)]
    c = collator("funmatch", crop="rs", mix_config=MixConfig(mixup_alpha=1.0))
    batch = c(batch_rows)
    lam, perm = batch["mix_lam"].double(), batch["mix_perm"]
    own, partner = torch.tensor(values, dtype=torch.float64), torch.tensor(values, dtype=torch.float64)[perm]
    expected = torch.round(lam * own + (1 - lam) * partner)
    for key in ("pixel_values", "teacher_pixel_values"):
        view = batch[key].double()
        assert torch.equal(view.amin(dim=(1, 2, 3)), expected) and torch.equal(
            view.amax(dim=(1, 2, 3)), expected
        )
    assert (lam < 1).any()


def test_cutmix_pastes_the_same_relative_box_in_both_views():
    images = [Image.new("RGB", (64, 64), (v, v, v)) for v in (0, 255, 0, 255)]
    batch_rows = [{"image": im, "label": i, "sample_id": i} for i, im in enumerate(images)]
    c = collator("funmatch", crop="rs", mix_config=MixConfig(mixup_alpha=0.0, cutmix_alpha=1.0))
    batch = c(batch_rows)
    for i in range(4):
        fractions = []
        for key in ("pixel_values", "teacher_pixel_values"):
            view = batch[key][i, 0]
            own = 0 if i % 2 == 0 else 255
            fractions.append(float((view != own).double().mean()))
        # pasted area, rounded per resolution (16 and 40 px): equal up to the pixel grid
        assert abs(fractions[0] - fractions[1]) <= 2 / 16 + 2 / 40
        assert abs(fractions[1] - (1 - float(batch["mix_lam"][i]))) <= 2 / 40 + 1e-6


def test_one_extra_view_per_ensemble_resolution_from_the_same_box():
    c = collator("same/ic", student=16, teacher=16, extra_teacher_sizes=(16, 24, 48))
    batch = c(rows(3))
    assert "teacher_pixel_values" not in batch  # the 16 px teacher shares the student's pixels
    assert batch[teacher_view_key(24)].shape == (3, 3, 24, 24)
    assert batch[teacher_view_key(48)].shape == (3, 3, 48, 48)
    assert teacher_view_key(16) not in batch
    for i in range(3):
        centre = box_centre(batch["pixel_values"][i])
        for size in (24, 48):
            other = box_centre(batch[teacher_view_key(size)][i])
            assert abs(other[0] - centre[0]) < 1.5 and abs(other[1] - centre[1]) < 1.5
    views = teacher_views(batch)
    assert sorted(views) == [16, 24, 48] and views[16] is batch["pixel_values"]


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="teacher_input='fix/xx'"):
        parse_teacher_input("fix/xx", "ic")
