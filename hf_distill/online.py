"""Online and multi-stage distillation.

* Deep mutual learning (DML, Zhang et al., CVPR 2018): the student and one or more peers train together,
  each from the labels and from the others' predictions. Peers are auxiliary modules of the trained model
  (``Trainer.model``), so the optimizer, DDP/FSDP and checkpoints cover them; each one is saved in Hub
  layout with :func:`save_peer` / ``DistillationTrainer.save_peer``.
* Teacher-assistant KD (TAKD, Mirzadeh et al., AAAI 2020): teacher -> assistant(s) -> student, each stage
  an ordinary :class:`~hf_distill.DistillationTrainer` run whose teacher is the previous stage's saved
  student (:func:`takd_stages`, :func:`run_takd`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import DistillationConfig
from .hub import LoadedModel, Normalizer, PreprocessSpec, forward_logits, load_model, save_student
from .losses import PEER_PREFIX, ModelOutputs
from .teacher import forward_kwargs, probe_num_outputs


class Peer(nn.Module):
    """A peer student inside ``Trainer.model``: runs on the batch's uint8 ``pixel_values`` (resized to its
    own input size when that differs), normalised with its own mean/std; returns its logits as
    :class:`~hf_distill.losses.ModelOutputs`."""

    def __init__(self, loaded: LoadedModel, preprocess: PreprocessSpec):
        super().__init__()
        self.model = loaded.module
        self.library = loaded.library
        self.preprocess = preprocess
        self.normalizer = Normalizer(preprocess.mean, preprocess.std)
        self.kwargs = forward_kwargs(self.model, self.library, preprocess.image_size)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict) -> ModelOutputs:
        pixels = batch["pixel_values"]
        size = self.preprocess.image_size
        if tuple(pixels.shape[-2:]) != (size, size):
            pixels = F.interpolate(pixels.float(), size=(size, size), mode="bilinear", align_corners=False)
        return ModelOutputs(forward_logits(self.model, self.normalizer(pixels), self.library, **self.kwargs))


def build_peers(args: DistillationConfig, label_names: list[str], student_size: int) -> dict[str, nn.Module]:
    """``{"peer1": Peer, ...}`` from ``args.peer_model_names_or_paths`` (each sized to the dataset's classes,
    checked by one blank forward at ``student_size``, the student's resolution); ``{}`` when none."""
    peers: dict[str, nn.Module] = {}
    for i, source in enumerate(args.peer_model_names_or_paths, start=1):
        loaded = load_model(
            source, label_names=label_names, pretrained=args.student_pretrained, role="student"
        )
        spec = loaded.preprocess
        preprocess = PreprocessSpec(student_size, spec.mean, spec.std, spec.interpolation)
        outputs = probe_num_outputs(loaded.module, loaded.library, preprocess, "image_size")
        if outputs != len(label_names):
            raise ValueError(
                f"DistillationConfig.peer_model_names_or_paths[{i - 1}]={source!r} outputs {outputs} logits but the "
                f"dataset has {len(label_names)} classes; give a peer whose head we can size"
            )
        peers[f"{PEER_PREFIX}{i}"] = Peer(loaded, preprocess)
    return peers


def peer_names(trainer: Any) -> list[str]:
    """Names of the trainer's peer students (``peer1``, ``peer2`` …)."""
    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    auxiliary = getattr(model, "auxiliary", {})
    return [name for name in auxiliary if name.startswith(PEER_PREFIX)]


def save_peer(trainer: Any, name: str, output_dir: str | os.PathLike) -> list[str]:
    """Write peer ``name`` alone in Hub layout (loads with ``pipeline`` / ``timm.create_model`` like the
    student). Returns the files written (none on processes that do not save)."""
    peer = trainer.auxiliary_module(name)
    if not isinstance(peer, Peer):
        raise KeyError(f"auxiliary module '{name}' is not a peer student; peers: {peer_names(trainer)}")
    if not trainer.args.should_save:
        return []
    return save_student(peer.model, output_dir, label_names=trainer.label_names_, preprocess=peer.preprocess)


@torch.no_grad()
def evaluate_peer(trainer: Any, name: str, dataset: Any) -> float:
    """Top-1 accuracy of peer ``name`` on ``dataset`` (evaluation collator, central view)."""
    peer = trainer.auxiliary_module(name)
    was_training = peer.training
    peer.eval()
    correct = total = 0
    try:
        for batch in trainer.get_eval_dataloader(dataset):
            batch = trainer._prepare_inputs(batch)
            logits = peer(ModelOutputs(None), None, batch).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            total += int(batch["labels"].numel())
    finally:
        peer.train(was_training)
    return correct / max(total, 1)


# ---------------------------------------------------------------------------------------------------------
# TAKD
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TAKDConfig(DistillationConfig):
    """:class:`DistillationConfig` plus the assistant chain of TAKD: teacher -> assistants -> student."""

    assistant_model_names_or_paths: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Teacher assistants, largest first (timm architecture names, Hub ids or local dirs). Each is "
            "distilled from the previous stage and then teaches the next; the last one teaches the student."
        },
    )
    assistant_num_train_epochs: float | None = field(
        default=None, metadata={"help": "Epochs of each assistant stage; default: num_train_epochs."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.assistant_model_names_or_paths:
            raise ValueError(
                "TAKDConfig.assistant_model_names_or_paths: give at least one assistant (e.g. ['resnet18']); "
                "without one TAKD is plain KD (recipes/distill.py)"
            )
        if self.assistant_num_train_epochs is not None and self.assistant_num_train_epochs <= 0:
            raise ValueError(
                f"TAKDConfig.assistant_num_train_epochs must be > 0, got {self.assistant_num_train_epochs}"
            )


def takd_stages(args: TAKDConfig) -> list[tuple[str, DistillationConfig]]:
    """One ``(stage name, config)`` per stage: ``assistant1`` … distilled into ``<output_dir>/assistants/
    <name>``, then the student into ``output_dir``. Each stage's teacher is the previous stage's output."""
    stages = []
    teacher = args.teacher_model_name_or_path
    for i, assistant in enumerate(args.assistant_model_names_or_paths, start=1):
        name = f"assistant{i}"
        out = os.path.join(args.output_dir, "assistants", name)
        epochs = args.assistant_num_train_epochs or args.num_train_epochs
        stages.append(
            (
                name,
                dataclasses.replace(
                    args,
                    student_model_name_or_path=assistant,
                    teacher_model_name_or_path=teacher,
                    output_dir=out,
                    num_train_epochs=epochs,
                ),
            )
        )
        teacher = out
    stages.append(("student", dataclasses.replace(args, teacher_model_name_or_path=teacher)))
    return stages


def run_takd(
    args: TAKDConfig, train_dataset: Any, eval_dataset: Any = None, **trainer_kwargs: Any
) -> dict[str, dict]:
    """Run every TAKD stage in order (train, evaluate when ``eval_dataset`` is given, save); returns the
    evaluation metrics per stage name."""
    from .trainer import DistillationTrainer

    results: dict[str, dict] = {}
    for name, stage in takd_stages(args):
        trainer = DistillationTrainer(
            args=stage, train_dataset=train_dataset, eval_dataset=eval_dataset, **trainer_kwargs
        )
        trainer.train()
        results[name] = trainer.evaluate() if eval_dataset is not None else {}
        trainer.save_model()
        trainer.accelerator.wait_for_everyone()
        results[name]["output_dir"] = stage.output_dir
        del trainer
    return results
