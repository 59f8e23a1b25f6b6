"""hf_distill: knowledge distillation for image classification on the Hugging Face stack."""

from .collators import DistillationCollator
from .config import DistillationConfig
from .label_bank import LabelBank, generate_label_bank, load_label_bank
from .losses import LOSSES, ModelOutputs, kd_loss
from .reliability import NonFiniteLossError, TeacherIntegrityError
from .teacher import Teacher, TeacherEnsemble
from .teacher_cache import TeacherCache
from .trainer import DistillationTrainer
from .version import __version__

__all__ = [
    "__version__",
    "LOSSES",
    "DistillationCollator",
    "DistillationConfig",
    "DistillationTrainer",
    "ModelOutputs",
    "NonFiniteLossError",
    "Teacher",
    "TeacherCache",
    "TeacherEnsemble",
    "TeacherIntegrityError",
    "LabelBank",
    "generate_label_bank",
    "kd_loss",
    "load_label_bank",
]
