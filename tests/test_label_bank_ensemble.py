"""A bank recorded from a teacher ensemble remembers how the members were reduced: a run that reduces them
another way is refused instead of replaying outputs that its configuration would not compute."""

from __future__ import annotations

import pytest

from hf_distill import DistillationTrainer
from hf_distill.label_bank import generate_for_trainer, load_label_bank

from .conftest import make_args, save_in_hub_layout, tiny_timm

SETTINGS = dict(teacher_input="same/rc", crop="rc", label_bank_records=2, temperature=2.0, alpha=0.5)


def test_bank_fingerprint_names_the_ensemble_reduction(tmp_path, digits):
    data = digits["train"].select(range(12))
    teachers = [
        save_in_hub_layout(tiny_timm(seed=1), tmp_path / "a"),
        save_in_hub_layout(tiny_timm(seed=2), tmp_path / "b"),
    ]
    args = make_args(
        tmp_path, teacher_model_name_or_path=teachers, teacher_ensemble_reduction="logit_mean", **SETTINGS
    )
    generator = DistillationTrainer(model=tiny_timm(seed=0), args=args, train_dataset=data)
    bank = tmp_path / "bank"
    generate_for_trainer(generator, data, bank, batch_size=6)
    assert load_label_bank(str(bank)).meta["teacher_ensemble_reduction"] == "logit_mean"

    def replay(reduction):
        replay_args = make_args(
            tmp_path,
            teacher_model_name_or_path=teachers,
            teacher_label_bank=str(bank),
            teacher_ensemble_reduction=reduction,
            **SETTINGS,
        )
        return DistillationTrainer(model=tiny_timm(seed=0), args=replay_args, train_dataset=data)

    assert replay("logit_mean").label_bank is not None
    with pytest.raises(
        ValueError,
        match="teacher_ensemble_reduction='logit_mean' but this run has "
        "teacher_ensemble_reduction='probability_mean'",
    ):
        replay("probability_mean")
