"""Deep mutual learning (DML, Zhang et al., CVPR 2018) as a method.

The student and one or more peers train together, each from the labels and from the others' predictions
(the ``dml`` loss term, :func:`hf_distill.losses.dml_term`). Peers are auxiliary modules of the trained
model (``Trainer.model``), so the optimizer, DDP/FSDP and checkpoints cover them; each one is saved in Hub
layout with :func:`save_peer` / ``trainer.save_peer(name, dir)``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .contract import Needs
from .hub import LoadedModel, Normalizer, PreprocessSpec, forward_logits, load_model, save_student
from .losses import PEER_PREFIX, ModelOutputs
from .method import Build, Method
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


def build_peers(args: Any, label_names: list[str], student_size: int) -> dict[str, nn.Module]:
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


class DMLMethod(Method):
    """DML: peers beside the student (auxiliary modules), trained by the ``dml`` term."""

    name = "dml"

    @classmethod
    def enabled(cls, args: Any) -> bool:
        return bool(args.peer_model_names_or_paths)

    @staticmethod
    def validate_config(config: Any, fail: Callable[[str, str], None]) -> None:
        names = [t if isinstance(t, str) else getattr(t, "__name__", "") for t in config.loss_types]
        if ("dml" in names) != bool(config.peer_model_names_or_paths):
            fail(
                "peer_model_names_or_paths",
                "and loss_types 'dml' go together: DML needs at least one peer, and peers train only with 'dml'",
            )

    @classmethod
    def needs(cls, args: Any) -> list[tuple[str, Needs]]:
        return []  # peers learn from the student and the labels; the teacher, if any, is the KD term's

    def auxiliary_modules(self, build: Build) -> dict[str, nn.Module]:
        return build_peers(self.args, build.label_names, build.student_preprocess.image_size)

    def exports(self, trainer: Any = None) -> dict[str, Any]:
        return {"save_peer": functools.partial(save_peer, trainer)} if trainer is not None else {}
