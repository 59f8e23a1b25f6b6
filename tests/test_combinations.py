"""The combination matrix: teacher_input x teacher source x term or method x logit standardisation x labelled
data. Every cell either trains a step with the teacher seeing exactly the view its mode prescribes, at
training and at evaluation, or is refused at construction with the message the support table gives
(hf_distill.composition, the table in the README).

The expected views are rendered here from each sample's parameters (seed, epoch, sample id) and the modes'
definitions (Beyer et al., Sec. 3.2), and compared pixel for pixel with what reached the teacher's
normaliser. The full matrix is marked slow; a cross-section runs in the default suite.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.batch import PIXEL_VALUES, SAMPLE_IDS, TL_PIXEL_VALUES, check_batch, teacher_labelled_views
from hf_distill.collators import ViewParams, render_view, sample_box, sample_generator
from hf_distill.composition import Cell, cell_settings, cell_verdict, cells, support_table
from hf_distill.label_bank import BANK_TEACHER_INPUTS, generate_for_trainer
from hf_distill.mixing import apply_mix, mix_config_of, sample_mix_params
from hf_distill.reliability import load_image
from hf_distill.teacher_cache import CachedTeacher

from .conftest import save_in_hub_layout, tiny_timm

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, BATCH = 16, 8
STUDENT, TEACHER, ENSEMBLE = 32, 48, (40, 48)
TINY_DEIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
BASE = dict(
    image_size=STUDENT,
    per_device_train_batch_size=BATCH,
    per_device_eval_batch_size=BATCH,
    max_steps=1,
    save_strategy="no",
    crop_scale=[0.3, 1.0],
    hflip=0.5,
    temperature=2.0,
    alpha=0.5,
    seed=3,
    ic_ens_crops=3,
    label_bank_records=2,
    disable_tqdm=True,
    dataloader_num_workers=0,
)
# Relation of the teacher's view to the student's, per mode, and the crops (the paper's definitions).
RELATION = {
    "fix/rs": ("fixed", "rs", "rs"),
    "fix/cc": ("fixed", "rc", "cc"),
    "fix/ic_ens": ("fixed", "ic", None),
    "ind/rc": ("independent", "rc", "rc"),
    "ind/ic": ("independent", "ic", "ic"),
    "same/rc": ("same", "rc", "rc"),
    "same/ic": ("same", "ic", "ic"),
    "funmatch": ("same", "ic", "ic"),
}


@pytest.fixture(scope="module")
def resources(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("matrix")
    data = digits["train"].select(range(N_TRAIN))
    return {
        "root": root,
        "train": data,
        "eval": digits["test"].select(range(BATCH)),
        "teacher": save_in_hub_layout(tiny_timm(seed=1), root / "teacher", size=TEACHER),
        "teacher_b": save_in_hub_layout(tiny_timm(seed=2), root / "teacher-b", size=ENSEMBLE[0]),
        "banks": {},
    }


def _settings(cell: Cell, res: dict, output_dir: Path) -> dict:
    settings = {
        **cell_settings(cell, str(output_dir)),
        **BASE,
        "teacher_cache_dir": str(res["root"] / "cache"),
    }
    if cell.source == "ensemble":
        settings["teacher_model_name_or_path"] = [res["teacher_b"], res["teacher"]]
        settings["teacher_image_sizes"] = list(ENSEMBLE)
    elif cell.source != "bank":
        settings["teacher_model_name_or_path"] = res["teacher"]
        settings["teacher_image_size"] = TEACHER
    if cell.term == "DeiT":
        settings["student_model_name_or_path"] = "deit_tiny_distilled_patch16_224"
        settings["student_model_kwargs"] = TINY_DEIT
    return settings


def _train_data(cell: Cell, res: dict):
    return res["train"] if cell.labelled else res["train"].remove_columns("label")


def _bank(cell: Cell, res: dict) -> str:
    """A bank generated for the cell's teacher input and data (generated once per pair)."""
    key = (cell.mode, cell.labelled)
    if key not in res["banks"]:
        live = Cell(cell.mode, "live", "none", False, cell.labelled)
        settings = _settings(live, res, res["root"] / f"gen-{len(res['banks'])}")
        settings["use_teacher_cache"] = False
        data = _train_data(cell, res)
        trainer = DistillationTrainer(
            model=tiny_timm(seed=0),
            args=DistillationConfig(**settings),
            train_dataset=data,
            eval_dataset=res["eval"],
        )
        path = res["root"] / f"bank-{len(res['banks'])}"
        generate_for_trainer(trainer, data, path, batch_size=BATCH)
        res["banks"][key] = str(path)
    return res["banks"][key]


def _record_teacher_inputs(trainer) -> list[list]:
    """Every uint8 batch that reaches each teacher member's normaliser, per member."""
    members = getattr(trainer.teacher, "members", [trainer.teacher])
    seen = [[] for _ in members]
    for i, member in enumerate(members):
        member.normalizer.register_forward_pre_hook(lambda m, a, i=i: seen[i].append(a[0].detach().clone()))
    return seen


def _expected_views(trainer, cell: Cell, batch: dict, size: int) -> torch.Tensor:
    """The teacher's training view of every sample in ``batch`` at ``size``, rendered from the sample's
    parameters."""
    args, rows = trainer.args, []
    relation, student_crop, teacher_crop = RELATION[cell.mode]
    views = []
    for sample_id in batch[SAMPLE_IDS].tolist():
        image = load_image(trainer.train_dataset[sample_id]["image"], sample_id)
        width, height = image.size
        rng = sample_generator(args.seed, 0, sample_id, 0)
        box = sample_box(student_crop, width, height, rng, tuple(args.crop_scale), tuple(args.crop_ratio))
        params = ViewParams(box, bool(rng.random() < args.hflip))
        if relation == "fixed":
            params = ViewParams(
                sample_box(teacher_crop, width, height, rng, crop_fraction=args.crop_fraction)
            )
        elif relation == "independent":
            teacher_rng = sample_generator(args.seed, 0, sample_id, 1)
            box = sample_box(
                teacher_crop, width, height, teacher_rng, tuple(args.crop_scale), tuple(args.crop_ratio)
            )
            params = ViewParams(box, bool(teacher_rng.random() < args.hflip))
        views.append(render_view(image, params, size))
        rows.append(sample_id)
    stacked = torch.stack(views)
    if cell.mode == "funmatch":  # the batch's one mixing draw, applied to the teacher's view too
        collator = trainer.data_collator
        generator = collator.batch_generator(batch[SAMPLE_IDS])
        params = sample_mix_params(len(rows), mix_config_of(args), generator)
        (stacked,) = apply_mix(params, stacked)
    return stacked


def _eval_images(res: dict, batch: dict) -> list:
    return [load_image(res["eval"][int(i)]["image"], int(i)) for i in batch[SAMPLE_IDS]]


def _sizes(cell: Cell) -> tuple[int, ...]:
    return ENSEMBLE if cell.source == "ensemble" else (TEACHER,)


def run_cell(cell: Cell, res: dict, tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    verdict = cell_verdict(cell, str(output_dir), BASE)
    settings = _settings(cell, res, output_dir)
    if cell.source == "bank":
        settings["teacher_label_bank"] = _bank(cell, res) if cell.mode in BANK_TEACHER_INPUTS else "no-bank"
    student = tiny_timm(seed=0) if cell.term != "DeiT" else None

    def build():
        return DistillationTrainer(
            model=student,
            args=DistillationConfig(**settings),
            train_dataset=_train_data(cell, res),
            eval_dataset=res["eval"],
        )

    if verdict is not None:
        with pytest.raises(ValueError) as refused:
            build()
        assert str(refused.value) == verdict
        return
    trainer = build()
    seen = _record_teacher_inputs(trainer) if trainer.teacher is not None else []

    # ---- a training step: forward, backward, every term finite
    batch = next(iter(trainer.get_train_dataloader()))
    check_batch(batch)
    trainer.model.train()
    inputs = trainer._prepare_inputs(dict(batch))
    loss = trainer.compute_loss(trainer.model, inputs)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.student.parameters())

    calls = [list(s) for s in seen]
    if cell.source == "bank":
        stored = trainer.label_bank.teacher_logits(batch["bank_rows"])
        torch.testing.assert_close(trainer.teacher_outputs(inputs).logits, stored)
    elif isinstance(trainer.teacher_source, CachedTeacher):
        # x comes from the cache: the teacher runs only for images made in the step (x')
        assert all(len(c) == (1 if TL_PIXEL_VALUES in batch else 0) for c in calls)
        if cell.mode != "fix/ic_ens" and len(_sizes(cell)) == 1:
            fixed = _expected_views(trainer, cell, batch, TEACHER)
            with torch.no_grad():
                torch.testing.assert_close(trainer.teacher_outputs(inputs).logits, trainer.teacher(fixed))
    else:
        for member_calls, size in zip(calls, _sizes(cell)):
            expected = _expected_views(trainer, cell, batch, size)
            assert torch.equal(member_calls[0].to(expected.dtype), expected), f"teacher view at {size} px"
    if (
        TL_PIXEL_VALUES in batch and cell.source != "bank"
    ):  # x': the teacher labels the views of x' in the batch
        views = teacher_labelled_views(batch)
        for member_calls, size in zip(calls, _sizes(cell)):
            key = next((k for k, v in views.items() if k != PIXEL_VALUES and v.shape[-1] == size), None)
            want = views[key] if key else views[PIXEL_VALUES]
            if want.shape[-1] != size:
                want = F.interpolate(want.float(), size=(size, size), mode="bilinear", antialias=True).clamp(
                    0, 255
                )
            assert torch.allclose(member_calls[-1].float(), want.float()), f"x' view at {size} px"

    # ---- evaluation: the teacher sees the central view at its own resolution, in every mode
    for s in seen:
        s.clear()
    trainer.model.eval()
    eval_batch = next(iter(trainer.get_eval_dataloader()))
    _, predictions, _ = trainer.prediction_step(trainer.model, eval_batch, prediction_loss_only=False)
    if cell.source == "bank":
        assert not isinstance(predictions, tuple)  # no teacher at evaluation
        return
    images = _eval_images(res, eval_batch)
    for member_calls, size in zip(seen, _sizes(cell)):
        expected = torch.stack([render_view(img, ViewParams((0.0, 0.0, *img.size)), size) for img in images])
        assert len(member_calls) == 1 and torch.equal(member_calls[0].to(expected.dtype), expected)


def _cell_id(cell: Cell) -> str:
    return f"{cell.source}-{cell.mode}-{cell.term}-{'LS' if cell.standardize else 'plain'}-" + (
        "labelled" if cell.labelled else "unlabelled"
    )


ALL = cells()
# The default suite, a cross-section: every (source, mode) with plain KD; every term and method under
# same/ic with each source; the standardised and unlabelled variants where the review found the bugs.


def _quick(c: Cell) -> bool:
    plain = not c.standardize and c.labelled
    if c.term == "none" and plain:
        return True
    if plain and (c.source, c.mode) in {
        ("live", "same/ic"),
        ("cache", "fix/cc"),
        ("ensemble", "same/ic"),
        ("bank", "funmatch"),
    }:
        return True
    variant_terms = ("none", "TL-mix (tlcutmix)", "pick", "DeiT", "logit term (dkd)")
    return c.source == "live" and c.mode == "same/ic" and c.term in variant_terms


QUICK = [c for c in ALL if _quick(c)]


@pytest.mark.parametrize("cell", QUICK, ids=_cell_id)
def test_cell_trains_with_the_prescribed_views_or_is_refused(cell, resources, tmp_path):
    run_cell(cell, resources, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("cell", [c for c in ALL if c not in QUICK], ids=_cell_id)
def test_every_other_cell(cell, resources, tmp_path):
    run_cell(cell, resources, tmp_path)


def test_the_six_reviewed_cases_are_right_or_refused(tmp_path):
    """The review's cases: each either refused with the alternative named, or trainable."""

    def verdict(mode, source, term, standardize=False, labelled=True):
        return cell_verdict(Cell(mode, source, term, standardize, labelled), str(tmp_path))

    # 1. fix/* with a feature term: the cache holds no features
    assert "holds no teacher features; set use_teacher_cache=false" in verdict(
        "fix/cc", "cache", "feature term (at)"
    )
    assert verdict("fix/cc", "live", "feature term (at)") is None  # the live teacher on the fixed view
    # 4. standardisation on outputs that are only probabilities
    assert "gives only tempered probabilities" in verdict("fix/ic_ens", "cache", "none", standardize=True)
    probabilities = {"teacher_ensemble_reduction": "probability_mean"}
    assert "gives only tempered probabilities" in cell_verdict(
        Cell("same/ic", "ensemble", "none", True, True), str(tmp_path), probabilities
    )
    assert verdict("same/ic", "ensemble", "none", standardize=True) is None  # the logit mean is logits
    assert verdict("fix/cc", "cache", "none", standardize=True) is None  # full logits are logits
    # 3./5. TL-mix with standardisation or unlabelled data trains (the x' KD is the trainer's own)
    assert verdict("same/ic", "live", "TL-mix (tlcutmix)", standardize=True) is None
    assert verdict("same/ic", "live", "pick", labelled=False) is None


def test_readme_support_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- support-table -->\n(.*?)<!-- /support-table -->", readme, re.S)
    assert match, "the README lacks the support table markers"
    assert match.group(1) == support_table(), "regenerate it: python -m hf_distill support-table"
