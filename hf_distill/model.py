"""``Trainer.model`` when trainable modules train beside the student: the student plus every one of them."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .hub import forward_logits
from .losses import ModelOutputs


class DistillationModule(nn.Module):
    """``Trainer.model`` when there are trainable auxiliary modules: the student plus every one of them
    (projectors, self-learning teachers, peer students …), so the optimizer, DDP/FSDP/DeepSpeed and
    checkpoints cover all trained parameters with no special case.

    Its forward runs the student and then each auxiliary module as ``module(student, teacher, batch)``,
    inside the one forward the distributed wrapper sees; what they return lands in
    ``ModelOutputs.auxiliary[name]``. ``save_model`` still writes the student alone.
    """

    def __init__(
        self,
        student: nn.Module,
        auxiliary: dict[str, nn.Module],
        library: str,
        student_kwargs: dict,
        feature_tap: Any = None,
    ):
        super().__init__()
        self.student = student
        self.auxiliary = nn.ModuleDict(auxiliary)
        self.library = library
        self.student_kwargs = dict(student_kwargs)
        # hf_distill.features.FeatureTap: when set, the student's forward also returns tapped features.
        self.feature_tap = feature_tap

    def forward(
        self,
        pixel_values: Tensor,
        teacher: ModelOutputs | None = None,
        batch: dict[str, Tensor] | None = None,
    ) -> ModelOutputs:
        if self.feature_tap is not None:
            outputs = ModelOutputs(*self.feature_tap(self.student, pixel_values, **self.student_kwargs))
        else:
            outputs = ModelOutputs(
                forward_logits(self.student, pixel_values, self.library, **self.student_kwargs)
            )
        for name, module in self.auxiliary.items():
            outputs.auxiliary[name] = module(outputs, teacher, batch if batch is not None else {})
        return outputs
