"""Faults: atomic checkpoints, NaN/inf loss, SIGTERM checkpoints, teacher integrity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from hf_distill import DistillationTrainer
from hf_distill.reliability import (
    STAGING_PREFIX,
    NonFiniteLossError,
    TeacherIntegrityError,
    publish_directory,
    tensor_fingerprints,
)

from .conftest import make_args

REPO = Path(__file__).resolve().parents[1]


def _trainer(tmp_path, digits, teacher, **overrides):
    return DistillationTrainer(
        model="test_resnet",
        teacher_model=teacher,
        args=make_args(tmp_path, **overrides),
        train_dataset=digits["train"],
    )


def _is_complete(checkpoint: str) -> bool:
    names = set(os.listdir(checkpoint))
    return {
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
    } <= names


# ----------------------------------------------------------------------------------- atomic checkpoints
def test_failure_mid_save_leaves_previous_checkpoint_loadable(tmp_path, digits, timm_teacher_dir):
    trainer = _trainer(tmp_path, digits, timm_teacher_dir, max_steps=4, save_strategy="steps", save_steps=2)
    original = trainer._save_rng_state
    calls = []

    def failing_rng_save(output_dir):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: model and optimizer already written, then the "crash"
            raise OSError("No space left on device")
        original(output_dir)

    trainer._save_rng_state = failing_rng_save
    with pytest.raises(OSError, match="No space left"):
        trainer.train()
    out = trainer.args.output_dir
    # The half-written step-4 checkpoint is not visible under a checkpoint name; step 2 is whole.
    assert not os.path.exists(os.path.join(out, "checkpoint-4"))
    assert get_last_checkpoint(out) == os.path.join(out, "checkpoint-2")
    assert _is_complete(os.path.join(out, "checkpoint-2"))
    staged = [n for n in os.listdir(out) if n.startswith(STAGING_PREFIX)]
    assert staged, "the interrupted save should have left its staging directory (as a killed run would)"
    assert os.path.exists(os.path.join(out, staged[0], "checkpoint-4", "optimizer.pt"))

    # A new run resumes from the last complete checkpoint and cleans the leftovers.
    resumed = _trainer(tmp_path, digits, timm_teacher_dir, max_steps=4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    assert _is_complete(os.path.join(out, "checkpoint-4"))
    assert not [n for n in os.listdir(out) if n.startswith(STAGING_PREFIX)]


def test_checkpoint_replaces_a_partial_directory_of_the_same_step(tmp_path, digits, timm_teacher_dir):
    trainer = _trainer(tmp_path, digits, timm_teacher_dir, max_steps=2, save_strategy="steps", save_steps=2)
    partial = Path(trainer.args.output_dir, "checkpoint-2")
    partial.mkdir(parents=True)
    (partial / "checkpoint-is-incomplete.txt").write_text("left by a killed save")
    trainer.train()
    assert _is_complete(str(partial)) and not (partial / "checkpoint-is-incomplete.txt").exists()


def test_save_total_limit_rotation_still_applies(tmp_path, digits, timm_teacher_dir):
    trainer = _trainer(
        tmp_path,
        digits,
        timm_teacher_dir,
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=2,
    )
    trainer.train()
    names = sorted(n for n in os.listdir(trainer.args.output_dir) if n.startswith("checkpoint-"))
    assert names == ["checkpoint-4", "checkpoint-6"]


def test_best_checkpoint_tracking_points_at_published_checkpoints(tmp_path, digits, timm_teacher_dir):
    import json

    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(
            tmp_path,
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            eval_strategy="steps",
            eval_steps=2,
            load_best_model_at_end=True,
            metric_for_best_model="accuracy",
            save_total_limit=1,
        ),
        train_dataset=digits["train"],
        eval_dataset=digits["test"],
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    out = trainer.args.output_dir
    assert best in {os.path.join(out, "checkpoint-2"), os.path.join(out, "checkpoint-4")}
    assert os.path.isdir(best) and STAGING_PREFIX not in best
    saved = json.loads(Path(out, "checkpoint-4", "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == best


def test_publish_directory_keeps_old_content_when_the_new_one_is_missing(tmp_path):
    final = tmp_path / "checkpoint-1"
    final.mkdir()
    (final / "a.txt").write_text("old")
    with pytest.raises(FileNotFoundError):
        publish_directory(str(tmp_path / "does-not-exist"), str(final))
    assert (final / "a.txt").read_text() == "old"
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "b.txt").write_text("new")
    publish_directory(str(staged), str(final))
    assert sorted(os.listdir(final)) == ["b.txt"] and not staged.exists()


# ------------------------------------------------------------------------------------------ NaN / inf
class _Snapshot(TrainerCallback):
    def __init__(self):
        self.weights = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_term_is_reported_with_step_and_name(tmp_path, digits, timm_teacher_dir, bad):
    calls = []

    def explodes_at_step_3(student, teacher, batch):
        calls.append(1)
        value = student.logits.float().mean() * 0.0
        return value + bad if len(calls) == 3 else value

    trainer = _trainer(
        tmp_path, digits, timm_teacher_dir, max_steps=5, loss_types=[explodes_at_step_3], loss_weights=[1.0]
    )
    snapshot = _Snapshot()
    trainer.add_callback(snapshot)
    expected = "nan" if bad != bad else "inf"
    with pytest.raises(NonFiniteLossError, match=rf"step 3 .*'explodes_at_step_3' = {expected}") as info:
        trainer.train()
    assert "sample ids" in str(info.value) and "learning_rate" in str(info.value)
    assert "'kd'" not in str(info.value) and "'ce'" not in str(info.value)  # only the faulty term is named
    assert trainer.state.global_step == 2
    # Raised before backward: the parameters are those of step 2, all finite (batch-norm running statistics
    # did see the forward pass of step 3).
    for key, value in trainer.model.named_parameters():
        assert torch.equal(value, snapshot.weights[key]), key
        assert torch.isfinite(value).all()


def test_non_finite_check_can_be_disabled(tmp_path, digits, timm_teacher_dir):
    def always_nan(student, teacher, batch):
        return student.logits.float().mean() * float("nan")

    trainer = _trainer(
        tmp_path,
        digits,
        timm_teacher_dir,
        max_steps=1,
        loss_types=[always_nan],
        loss_weights=[1.0],
        check_finite_loss=False,
    )
    trainer.train()  # the user opted out: no error (the Trainer's own nan filter then applies)


# ----------------------------------------------------------------------------------- teacher integrity
class _TouchTeacher(TrainerCallback):
    def __init__(self, trainer, what):
        self.trainer, self.what = trainer, what

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            module = self.trainer.teacher.module
            with torch.no_grad():
                if self.what == "weight":
                    next(module.parameters()).add_(1e-3)
                else:  # batch-norm statistics, as a teacher left in train mode would update
                    next(b for n, b in module.named_buffers() if "running_mean" in n).add_(1e-3)


@pytest.mark.parametrize("what", ["weight", "buffer"])
def test_teacher_mutation_during_training_raises(tmp_path, digits, timm_teacher_dir, what):
    trainer = _trainer(tmp_path, digits, timm_teacher_dir, max_steps=3)
    trainer.add_callback(_TouchTeacher(trainer, what))
    with pytest.raises(TeacherIntegrityError, match=r"teacher changed during training: 1 tensor"):
        trainer.train()


def test_teacher_integrity_passes_and_fingerprints_are_exact(tmp_path, digits, timm_teacher_dir):
    trainer = _trainer(tmp_path, digits, timm_teacher_dir, max_steps=2)
    reference = tensor_fingerprints(trainer.teacher.module)
    trainer.train()  # no error: the teacher is untouched
    assert tensor_fingerprints(trainer.teacher.module) == reference
    # One flipped bit in one tensor changes exactly that tensor's fingerprint.
    weight = next(trainer.teacher.module.parameters())
    with torch.no_grad():
        weight.view(-1).view(torch.int32)[0] ^= 1
    changed = [k for k, v in tensor_fingerprints(trainer.teacher.module).items() if v != reference[k]]
    assert len(changed) == 1


# -------------------------------------------------------------------------------------------- SIGTERM
_SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from transformers import TrainerCallback
    from tests.conftest import make_args, digits_dataset
    from hf_distill import DistillationTrainer

    out, teacher, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

    class Announce(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                marker.write_text("training")

    train = digits_dataset(seed=0)["train"].select(range(96))
    args = make_args(out, max_steps=100000, save_strategy="no", save_on_sigterm=True, logging_steps=1000)
    trainer = DistillationTrainer(model="test_resnet", teacher_model=teacher, args=args, train_dataset=train,
                                  callbacks=[Announce()])
    trainer.train()
    print("TRAINING FINISHED")
    """
)


class _SignalSelf(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, delivered to this process


def test_sigterm_in_process_saves_then_hands_the_signal_on(tmp_path, digits, timm_teacher_dir):
    """The fast variant: the signal goes to this process; the previously installed handler (a recorder here,
    the default one in a real run) receives it after the checkpoint is written."""
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        trainer = _trainer(
            tmp_path, digits, timm_teacher_dir, max_steps=50, save_strategy="no", save_on_sigterm=True
        )
        trainer.add_callback(_SignalSelf())
        trainer.train()
        # Sent after our callback ran for step 2, so acted on at the end of step 3 (the step in flight).
        checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-3")
        assert received == [signal.SIGTERM]
        assert trainer.state.global_step == 3 and _is_complete(checkpoint)
        assert get_last_checkpoint(trainer.args.output_dir) == checkpoint
        assert (
            signal.getsignal(signal.SIGTERM) is not None
            and signal.getsignal(signal.SIGTERM).__name__ == "<lambda>"
        )
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_then_terminates(tmp_path, digits, timm_teacher_dir):
    script = tmp_path / "run.py"
    script.write_text(_SIGTERM_SCRIPT)
    marker = tmp_path / "started"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run"), timm_teacher_dir, str(marker)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, process.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the training subprocess did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGTERM, output[-3000:]
    assert "TRAINING FINISHED" not in output
    out = tmp_path / "run" / "out"
    last = get_last_checkpoint(str(out))
    assert last is not None and _is_complete(last), output[-3000:]
    step = int(last.rsplit("-", 1)[1])
    assert step >= 3

    # The checkpoint resumes: two more steps from where the signal stopped the run.
    resumed = _trainer(tmp_path / "run", digits, timm_teacher_dir, max_steps=step + 2, save_strategy="no")
    resumed.train(resume_from_checkpoint=last)
    assert resumed.state.global_step == step + 2


def test_sigterm_handler_is_restored_after_training(tmp_path, digits, timm_teacher_dir):
    before = signal.getsignal(signal.SIGTERM)
    trainer = _trainer(tmp_path, digits, timm_teacher_dir, max_steps=1, save_on_sigterm=True)
    trainer.train()
    assert signal.getsignal(signal.SIGTERM) == before
