"""Multi-stage distillation: teacher-assistant KD (TAKD, Mirzadeh et al., AAAI 2020).

Teacher -> assistant(s) -> student, each stage an ordinary :class:`~hf_distill.DistillationTrainer` run whose
teacher is the previous stage's saved student (:func:`takd_stages`, :func:`run_takd`). Deep mutual learning,
the online method, lives in :mod:`hf_distill.dml` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .config import DistillationConfig
from .dml import Peer, build_peers, evaluate_peer, peer_names, save_peer
from .trainer import DistillationTrainer

__all__ = [
    "Peer",
    "TAKDConfig",
    "build_peers",
    "evaluate_peer",
    "peer_names",
    "run_takd",
    "save_peer",
    "takd_stages",
]


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
