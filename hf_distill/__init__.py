"""hf_distill: knowledge distillation for image classification on the Hugging Face stack."""

from .collators import DistillationCollator
from .config import DistillationConfig
from .losses import LOSSES, ModelOutputs, kd_loss
from .teacher import Teacher
from .trainer import DistillationTrainer

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "DistillationCollator",
    "DistillationConfig",
    "DistillationTrainer",
    "ModelOutputs",
    "Teacher",
    "kd_loss",
]
