"""Which combinations of settings train, and why the others are refused: one source of truth.

:func:`requirements` lists what a config's terms and methods need (the main KD term, every ``loss_types``
term, every enabled method), :func:`refusals` compares that with what the teacher source provides
(:mod:`hf_distill.contract`), and the trainer calls :func:`check_composition` once, at construction.
:func:`support_table` runs the same functions over the combination matrix (teacher input x teacher source x
term or method x logit standardisation x labelled data) without building any model; the README's table
is its output (``python -m hf_distill support-table``) and a test keeps the two equal.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from .config import DistillationConfig
from .contract import Needs, Provides, refusal
from .registry import METHODS, teacher_source_class
from .terms import main_kd_needs, resolve_terms, term_needs


def requirements(args: Any, labelled: bool = True) -> list[tuple[str, Needs]]:
    """``(setting, needs)`` of everything the config computes that reads the teacher or the batch. The KD
    term counts when it has weight: ``alpha > 0``, or unlabelled data (KD is then the whole loss)."""
    methods = [method for method in METHODS if method.enabled(args)]
    out: list[tuple[str, Needs]] = []
    replaces_kd = any(method.replaces_base_loss for method in methods)
    if not replaces_kd and (args.alpha > 0 or not labelled):
        out.append((f"alpha={args.alpha} (the KD term)", main_kd_needs(args)))
    for term in resolve_terms(args):
        out.append((f"loss_types '{term.name}'", term_needs(term)))
    for method in methods:
        out.extend(method.needs(args))
    return out


def refusals(args: Any, provides: Provides | None, labelled: bool = True) -> list[str]:
    """Every reason the config cannot be computed as configured on ``provides`` (empty: it can)."""
    reasons = []
    for method in METHODS:
        if method.enabled(args):
            reason = method.refuse(args)
            if reason is not None:
                reasons.append(reason)
    for what, needs in requirements(args, labelled):
        reason = refusal(what, needs, provides, labelled=labelled)
        if reason is not None:
            reasons.append(reason)
    return reasons


def check_composition(args: Any, provides: Provides | None, labelled: bool = True) -> None:
    """Raise ``ValueError`` naming both settings and the alternative for the first refusal."""
    reasons = refusals(args, provides, labelled)
    if reasons:
        raise ValueError(f"DistillationConfig: {reasons[0]}")


# ------------------------------------------------------------------------------------------ the table
MODES = ("fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic", "same/rc", "same/ic", "funmatch")
SOURCES = ("live", "ensemble", "cache", "bank")
# One representative per kind of term or method, with the settings that turn it on.
TERMS: dict[str, dict[str, Any]] = {
    "none": {},
    "logit term (dkd)": {"loss_types": ["dkd"], "loss_weights": [1.0]},
    "feature term (at)": {
        "loss_types": ["at"],
        "loss_weights": [1.0],
        "student_feature_layers": ["-1"],
        "teacher_feature_layers": ["-1"],
    },
    "TL-mix (tlcutmix)": {"augmentation_mode": "tlcutmix", "cutmix_alpha": 1.0},
    "pick": {"augmentation_mode": "tlcutmix", "cutmix_alpha": 1.0, "pick": True},
    "DeiT": {"deit_distillation": "soft"},
    "SLKD": {"slkd_num_teachers": 1},
    "DML": {"loss_types": ["dml"], "loss_weights": [1.0], "peer_model_names_or_paths": ["test_resnet"]},
}


@dataclass(frozen=True)
class Cell:
    mode: str
    source: str
    term: str
    standardize: bool
    labelled: bool


def cell_settings(cell: Cell, output_dir: str) -> dict[str, Any] | None:
    """The config fields of one cell of the matrix (None: the source does not apply to the mode)."""
    if cell.source == "cache" and not cell.mode.startswith("fix/"):
        return None  # the fixed-teacher cache holds fixed views only
    settings: dict[str, Any] = {
        "output_dir": output_dir,
        "teacher_input": cell.mode,
        "crop": "ic",
        "logit_standardization": cell.standardize,
        "use_teacher_cache": cell.source == "cache" or cell.mode == "fix/ic_ens",
        "report_to": "none",
        "use_cpu": True,
    }
    if cell.mode == "funmatch":
        settings["mixup_alpha"] = 1.0
    if cell.source == "ensemble":
        settings["teacher_model_name_or_path"] = ["teacher-a", "teacher-b"]
        settings["teacher_image_sizes"] = [32, 48]
    if cell.source == "bank":
        settings["teacher_label_bank"] = "bank"
    if cell.source == "live" and cell.mode == "fix/ic_ens":
        settings["use_teacher_cache"] = False
    settings.update(TERMS[cell.term])
    return settings


def cell_verdict(cell: Cell, output_dir: str, overrides: dict[str, Any] | None = None) -> str | None:
    """None when the cell trains; otherwise the refusal message (from the config or the contract).
    ``overrides`` are further config fields (sizes, weights) that leave the cell what it is."""
    settings = cell_settings(cell, output_dir)
    if settings is None:
        raise ValueError(f"{cell} is not a cell of the matrix")
    settings.update(overrides or {})
    try:
        args = DistillationConfig(**settings)
    except ValueError as error:
        return str(error)
    has_teacher = cell.source != "bank"
    source = teacher_source_class(args, has_teacher=has_teacher)
    provides = source.provisions(args, ensemble=cell.source == "ensemble") if source is not None else None
    reasons = refusals(args, provides, labelled=cell.labelled)
    return f"DistillationConfig: {reasons[0]}" if reasons else None


def cells() -> list[Cell]:
    out = []
    for mode in MODES:
        for source in SOURCES:
            for term in TERMS:
                for standardize in (False, True):
                    for labelled in (True, False):
                        cell = Cell(mode, source, term, standardize, labelled)
                        if cell_settings(cell, "x") is not None:
                            out.append(cell)
    return out


def support_table() -> str:
    """The README's support table: rows (teacher source, teacher_input), columns terms and methods; each
    cell says whether plain KD on labelled data trains (✓) or is refused (✗n: reason n below), followed by
    the variants that differ: ``LS`` (logit standardisation), ``unlabelled`` (no labels), or both."""
    with tempfile.TemporaryDirectory() as directory:
        verdicts = {cell: cell_verdict(cell, directory) for cell in cells()}
    reasons: list[str] = []

    def code(reason: str) -> str:
        text = reason.removeprefix("DistillationConfig: ").removeprefix("DistillationConfig.")
        if text not in reasons:
            reasons.append(text)
        return f"✗{reasons.index(text) + 1}"

    header = "| source | teacher_input | " + " | ".join(TERMS) + " |"
    lines = [header, "|" + "---|" * (len(TERMS) + 2)]
    for source in SOURCES:
        for mode in MODES:
            row = [cell for cell in verdicts if cell.source == source and cell.mode == mode]
            if not row:
                continue
            entries = []
            for term in TERMS:
                variants = {(c.standardize, c.labelled): verdicts[c] for c in row if c.term == term}
                base = variants[(False, True)]
                entry = "✓" if base is None else code(base)
                for standardize, labelled in ((False, False), (True, True), (True, False)):
                    verdict = variants[(standardize, labelled)]
                    if verdict != base:
                        name = "+".join(
                            n for n, on in (("LS", standardize), ("unlabelled", not labelled)) if on
                        )
                        entry += f"; {name} {'✓' if verdict is None else code(verdict)}"
                entries.append(entry)
            lines.append(f"| {source} | {mode} | " + " | ".join(entries) + " |")
    notes = [f"{i}. {reason}" for i, reason in enumerate(reasons, start=1)]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
