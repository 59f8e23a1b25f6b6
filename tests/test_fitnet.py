"""FitNets' two-stage procedure (hf_distill.fitnet): hint training of the layers up to the guided layer with
the regressor, then KD of the whole student from the stage-1 weights."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import TrainerCallback

from hf_distill.fitnet import fitnet_stage_configs, run_fitnet_two_stage

from .conftest import make_args

LOWER = ("conv1.", "bn1.", "layer1.", "layer2.")  # test_resnet up to layer2, the guided layer
UPPER = ("layer3.", "layer4.", "fc.")
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class Snapshots(TrainerCallback):
    """The trained model's state (student and regressor) at the start and end of every stage, and each
    stage's log."""

    def __init__(self):
        self.begin, self.end, self.logs = [], [], []

    @staticmethod
    def _state(model):
        return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin.append(self._state(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end.append(self._state(model))
        self.logs.append([e for e in state.log_history if "loss" in e])


def _student(state):
    prefix = "student."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} or state


def _changed(before, after, prefixes):
    return [k for k in before if k.startswith(prefixes) and not torch.equal(before[k], after[k])]


def test_two_stages_train_lower_layers_then_the_whole_student(tmp_path, digits, timm_teacher_dir):
    args = make_args(
        tmp_path,
        loss_types=["fitnet"],
        loss_weights=[100.0],
        student_feature_layers=["layer2"],
        teacher_feature_layers=["layer3"],
        alpha=0.5,
        max_steps=2,
    )
    snapshots = Snapshots()
    results = run_fitnet_two_stage(
        args,
        digits["train"],
        digits["test"],
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        callbacks=[snapshots],
    )
    (hint_begin, kd_begin), (hint_end, kd_end) = snapshots.begin, snapshots.end

    # Stage 1: the layers up to the guided one and the regressor learn; everything above leaves the stage
    # bit-identical (its parameters are frozen; its normalisation statistics, which the forward passes move,
    # are put back after the stage). Stage 2 starts from exactly that student.
    s_begin, s_end = _student(hint_begin), _student(hint_end)
    s_kd_begin, s_kd_end = _student(kd_begin), _student(kd_end)
    assert any(k.startswith("conv1.") for k in _changed(s_begin, s_end, LOWER))
    assert any(k.startswith("layer2.") for k in _changed(s_begin, s_end, LOWER))
    assert [k for k in _changed(s_begin, s_end, UPPER) if not k.endswith(BUFFERS)] == []
    assert _changed(s_begin, s_kd_begin, UPPER) == []
    assert set(s_kd_begin) == set(s_end)
    assert _changed(s_end, s_kd_begin, LOWER) == []
    regressor = [k for k in hint_begin if k.startswith("auxiliary.fitnet.")]
    assert regressor and _changed(hint_begin, hint_end, ("auxiliary.fitnet.",))
    hint_logs = snapshots.logs[0]
    assert hint_logs and all(
        "loss_fitnet" in e and "loss_ce" not in e and "loss_kd" not in e for e in hint_logs
    )
    for e in hint_logs:  # the whole loss is the hint
        assert e["loss"] == pytest.approx(e["loss_fitnet"], rel=1e-3)

    # Stage 2 has no regressor and trains the whole student with CE + KD.
    assert not any(k.startswith("auxiliary.") for k in kd_begin)
    assert _changed(s_kd_begin, s_kd_end, UPPER) and _changed(s_kd_begin, s_kd_end, LOWER)
    kd_logs = snapshots.logs[1]
    assert kd_logs and all({"loss_ce", "loss_kd"} <= set(e) and "loss_fitnet" not in e for e in kd_logs)

    assert results["hint"]["output_dir"] == os.path.join(args.output_dir, "fitnet_hint")
    assert results["student"]["output_dir"] == args.output_dir
    assert "eval_loss" in results["hint"] and "eval_loss" in results["student"]
    assert os.path.exists(os.path.join(args.output_dir, "fitnet_hint", "model.safetensors"))
    assert os.path.exists(os.path.join(args.output_dir, "model.safetensors"))


def test_stage_configs(tmp_path):
    args = make_args(
        tmp_path,
        loss_types=["fitnet", "at"],
        loss_weights=[100.0, 1000.0],
        loss_kwargs={"fitnet": {"pairs": [0], "regressor": "1x1"}, "at": {"pairs": [1]}},
        student_feature_layers=["layer2", "layer3"],
        teacher_feature_layers=["layer3", "layer4"],
        max_steps=5,
    )
    hint, kd = fitnet_stage_configs(args, hint_max_steps=2)
    assert (hint.loss_types, hint.loss_weights, hint.max_steps) == (["fitnet"], [1.0], 2)
    assert hint.loss_kwargs == {"fitnet": {"pairs": [0], "regressor": "1x1"}}
    assert (kd.loss_types, kd.loss_weights, kd.loss_kwargs) == (["at"], [1000.0], {"at": {"pairs": [1]}})
    assert kd.output_dir == args.output_dir and hint.output_dir == os.path.join(
        args.output_dir, "fitnet_hint"
    )
    with pytest.raises(ValueError, match="no 'fitnet' term"):
        fitnet_stage_configs(make_args(tmp_path))
