"""Each feature / relational term trains a tiny student through DistillationTrainer: student and auxiliary
parameters change, the teacher stays bit-identical, auxiliary modules stay out of the saved student."""

from __future__ import annotations

import os

import pytest
import timm
import torch
from safetensors.torch import load_file

from hf_distill import DistillationTrainer
from hf_distill.losses import at_loss, dkd_loss, kd_loss_standardized, rkd_loss

from .conftest import make_args

LAYERS = {"student_feature_layers": ["layer2", "layer3"], "teacher_feature_layers": ["layer2", "layer3"]}
TRAINABLE = {"fitnet", "vid", "crd"}


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


TERMS = ["fitnet", "at", "fsp", "sp", "pkt", "rkd", "cc", "vid", "crd"]


@pytest.fixture(scope="module")
def all_terms(tmp_path_factory, digits):
    """One trainer with every feature term at once (each unit test builds no trainer of its own)."""
    from .conftest import save_in_hub_layout, tiny_timm

    root = tmp_path_factory.mktemp("all-terms")
    teacher_dir = save_in_hub_layout(tiny_timm(seed=1), root / "teacher")
    args = make_args(root, loss_types=TERMS, loss_weights=[1.0] * len(TERMS), max_steps=2, **LAYERS)
    torch.manual_seed(0)
    return DistillationTrainer(
        model="test_resnet", teacher_model=teacher_dir, args=args, train_dataset=digits["train"]
    )


@pytest.mark.parametrize("term", TERMS)
def test_each_feature_term_sends_gradients_to_student_and_its_module(term, all_terms, digits):
    trainer = all_terms
    batch = _batch(trainer, digits)
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    teacher = trainer.teacher_outputs(batch)
    student = trainer.student_outputs(trainer.model, batch, teacher)
    ((name, fn, _, params),) = [t for t in trainer.extra_terms if t[0] == term]
    value = fn(student, teacher, batch, **params)
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
    value.backward()
    grad = trainer.student.conv1[0].weight.grad  # the stem: below every tapped layer
    assert grad is not None and grad.abs().sum() > 0, "no gradient reached the student's early layers"
    assert all(p.grad is None for p in trainer.teacher.module.parameters())
    if term in TRAINABLE:
        grads = [p.grad for p in trainer.auxiliary_module(term).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), (
            f"no gradient reached the {term} module"
        )
    trainer.model.zero_grad(set_to_none=True)


def test_all_feature_terms_train_together(all_terms):
    trainer = all_terms
    args = trainer.args
    student_before, teacher_before = state(trainer.student), state(trainer.teacher.module)
    auxiliary_before = {term: state(trainer.auxiliary_module(term)) for term in TRAINABLE}
    trainer.train()
    changed = [
        k
        for k, v in state(trainer.student).items()
        if v.is_floating_point() and not torch.equal(v, student_before[k])
    ]
    assert "conv1.0.weight" in changed
    for key, value in state(trainer.teacher.module).items():
        assert torch.equal(value, teacher_before[key]), key
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all({f"loss_{term}" for term in TERMS} <= set(e) for e in logged)
    for term, before in auxiliary_before.items():
        after = trainer.auxiliary_module(term).state_dict()
        assert any(v.is_floating_point() and not torch.equal(v, after[k]) for k, v in before.items()), term
    trainer.save_model()
    saved = load_file(os.path.join(args.output_dir, "model.safetensors"))
    assert set(saved) == set(trainer.student.state_dict())
    reloaded = timm.create_model(f"local-dir:{args.output_dir}", pretrained=True)
    torch.testing.assert_close(
        reloaded.state_dict()["fc.weight"], trainer.student.state_dict()["fc.weight"].cpu()
    )


def _batch(trainer, digits, n=8):
    return trainer.data_collator([digits["train"][i] | {"sample_id": i} for i in range(n)])


def test_term_values_match_the_formulas_on_independently_tapped_features(tmp_path, digits, timm_teacher_dir):
    args = make_args(
        tmp_path,
        loss_types=["at", "rkd"],
        loss_weights=[0.5, 2.0],
        loss_kwargs={"at": {"pairs": [0]}, "rkd": {"distance_weight": 1.0, "angle_weight": 3.0}},
        student_feature_layers=["layer2", "pre_logits"],
        teacher_feature_layers=["layer3", "pre_logits"],
        alpha=1.0,
    )
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    batch = _batch(trainer, digits)
    trainer.model.eval()
    with torch.no_grad():
        teacher = trainer.teacher_outputs(batch)
        student = trainer.student_outputs(trainer.model, batch, teacher)
        total, terms = trainer.distillation_loss(student, teacher, batch)
        s_net, t_net = trainer.student, trainer.teacher.module
        xs = trainer.student_normalizer(batch["pixel_values"])
        xt = trainer.teacher.normalizer(batch["pixel_values"])
        s_map = s_net.layer2(s_net.layer1(s_net.maxpool(s_net.act1(s_net.bn1(s_net.conv1(xs))))))
        t_feats = t_net.forward_intermediates(xt, indices=[3], intermediates_only=True)[0]
        s_emb = s_net.forward_head(s_net.forward_features(xs), pre_logits=True)
        t_emb = t_net.forward_head(t_net.forward_features(xt), pre_logits=True)
    torch.testing.assert_close(terms["at"], at_loss(s_map, t_feats))
    torch.testing.assert_close(terms["rkd"], rkd_loss(s_emb, t_emb, 1.0, 3.0))
    torch.testing.assert_close(total, terms["kd"] + 0.5 * terms["at"] + 2.0 * terms["rkd"])


def test_crd_draws_exact_negatives_from_the_training_labels(all_terms, digits):
    crd = all_terms.auxiliary_module("crd")
    assert crd.negative_sampling == "exact"
    labels = torch.tensor(digits["train"]["label"])
    ids = torch.arange(8)
    negatives = crd.sample_negatives(8, ids).cpu()
    assert (labels[negatives] != labels[ids][:, None]).all()


def test_crd_exact_sampling_without_labels_is_refused(tmp_path, digits, timm_teacher_dir):
    unlabelled = digits["train"].remove_columns("label")
    args = make_args(tmp_path, loss_types=["crd"], loss_weights=[0.8], **LAYERS)
    with pytest.raises(ValueError, match="negative_sampling: uniform"):
        DistillationTrainer(
            model="test_resnet",
            teacher_model=timm_teacher_dir,
            args=args,
            train_dataset=unlabelled,
            eval_dataset=digits["test"],
        )
    args = make_args(
        tmp_path,
        loss_types=["crd"],
        loss_weights=[0.8],
        loss_kwargs={"crd": {"negative_sampling": "uniform"}},
        **LAYERS,
    )
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=args,
        train_dataset=unlabelled,
        eval_dataset=digits["test"],
    )
    assert trainer.auxiliary_module("crd").negative_sampling == "uniform"


@pytest.mark.parametrize("warmup_epochs", [20.0, 0.0])
def test_dkd_warmup_follows_the_training_epoch(warmup_epochs, tmp_path, digits, timm_teacher_dir):
    args = make_args(
        tmp_path,
        loss_types=["dkd"],
        loss_weights=[1.0],
        loss_kwargs={"dkd": {"warmup_epochs": warmup_epochs}},
        alpha=0.0,
        max_steps=2,
    )
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    trainer.train()
    first, second = [e["loss_dkd"] for e in trainer.state.log_history if "loss_dkd" in e]
    if warmup_epochs:  # epoch 0 at the first step: factor 0; then (1/6 epoch) / 20
        assert first == 0.0 and second > 0.0
    else:
        assert first > 0.0 and second > 0.0
    batch = _batch(trainer, digits)
    trainer.model.eval()
    with torch.no_grad():  # evaluation: no warm-up factor
        teacher = trainer.teacher_outputs(batch)
        student = trainer.student_outputs(trainer.model, batch, teacher)
        _, terms = trainer.distillation_loss(student, teacher, batch)
    expected = dkd_loss(student.logits, teacher.logits, batch["labels"], args.temperature, 1.0, 8.0)
    torch.testing.assert_close(terms["dkd"], expected)


def test_logit_standardization_is_an_option_of_kd(tmp_path, digits, timm_teacher_dir):
    args = make_args(tmp_path, logit_standardization=True, alpha=1.0, temperature=2.0)
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    batch = _batch(trainer, digits)
    trainer.model.eval()
    with torch.no_grad():
        teacher = trainer.teacher_outputs(batch)
        student = trainer.student_outputs(trainer.model, batch, teacher)
        _, terms = trainer.distillation_loss(student, teacher, batch)
    torch.testing.assert_close(terms["kd"], kd_loss_standardized(student.logits, teacher.logits, 2.0))


@pytest.mark.parametrize("logit_term", ["dkd", "kd_standardized"])
def test_logit_terms_train(logit_term, tmp_path, digits, timm_teacher_dir):
    args = make_args(tmp_path, loss_types=[logit_term], loss_weights=[1.0], max_steps=2)
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    assert trainer.feature_taps is None
    trainer.train()
    assert all(f"loss_{logit_term}" in e for e in trainer.state.log_history if "loss" in e)


def test_feature_term_combines_with_teacher_input_and_tl_mixing(tmp_path, digits, timm_teacher_dir):
    args = make_args(
        tmp_path,
        loss_types=["at", "crd"],
        loss_weights=[1.0, 0.5],
        teacher_input="same/ic",
        augmentation_mode="tlcutmix",
        cutmix_alpha=1.0,
        max_steps=2,
        **LAYERS,
    )
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    before = state(trainer.student)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all({"loss_at", "loss_crd", "loss_kd_aug"} <= set(e) for e in logged)
    assert any(
        not torch.equal(v, before[k]) for k, v in state(trainer.student).items() if v.is_floating_point()
    )


def test_resume_with_taps_but_no_trainable_module(tmp_path, digits, timm_teacher_dir):
    args = make_args(
        tmp_path,
        loss_types=["sp"],
        loss_weights=[1.0],
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        **LAYERS,
    )
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    trainer.train()
    checkpoint = os.path.join(args.output_dir, "checkpoint-1")
    resumed = DistillationTrainer(
        model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    resumed.train(resume_from_checkpoint=checkpoint)
    for (key, a), b in zip(trainer.student.state_dict().items(), resumed.student.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


def test_bad_feature_term_settings_fail_at_construction(tmp_path, digits, timm_teacher_dir):
    args = make_args(
        tmp_path,
        loss_types=["fsp"],
        loss_weights=[1.0],
        student_feature_layers=["layer2", "layer3"],
        teacher_feature_layers=["layer3", "layer4"],
    )
    with pytest.raises(ValueError, match="fsp compares channel-by-channel"):
        DistillationTrainer(
            model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
        )
    args = make_args(tmp_path, loss_types=["at"], loss_weights=[1.0], loss_kwargs={"at": {"q": 2}}, **LAYERS)
    with pytest.raises(ValueError, match=r"loss_kwargs\['at'\]: unknown parameters \['q'\]"):
        DistillationTrainer(
            model="test_resnet", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
        )


def test_crd_on_a_stream_is_refused_naming_the_stream(tmp_path, digits, timm_teacher_dir):
    args = make_args(tmp_path, loss_types=["crd"], loss_weights=[0.8], max_steps=2, **LAYERS)
    with pytest.raises(
        ValueError, match=r"crd term needs a map-style train_dataset.*streaming=True.*drop 'crd'"
    ):
        DistillationTrainer(
            model="test_resnet",
            teacher_model=timm_teacher_dir,
            args=args,
            train_dataset=digits["train"].to_iterable_dataset(),
        )
