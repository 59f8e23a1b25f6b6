"""Model cards for distilled students: Hub metadata, results, method citations and usage snippets.

:func:`render_model_card` turns a :class:`StudentCardInfo` into a ``huggingface_hub.ModelCard`` from
the Jinja2 template shipped in ``hf_distill/templates/model_card.md``; :func:`plot_training_curve`
draws the loss terms and evaluation accuracy of ``trainer.state.log_history`` for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

LIBRARIES = ("timm", "transformers")

_WANG_2022 = """@inproceedings{wang2022makes,
  title     = {What Makes a ``Good'' Data Augmentation in Knowledge Distillation -- A Statistical Perspective},
  author    = {Wang, Huan and Lohit, Suhas and Jones, Michael and Fu, Yun},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {35},
  year      = {2022},
  eprint    = {2012.02909},
  archivePrefix = {arXiv},
  note      = {An earlier version circulated as ``Understanding the Success of Knowledge Distillation --
               A Data Augmentation Perspective''}
}"""
_WANG_2022_TITLE = (
    'What Makes a "Good" Data Augmentation in Knowledge Distillation -- A Statistical Perspective'
)

#: method key -> (paper title, BibTeX entry). Fields that could not be confirmed are left out.
METHOD_CITATIONS: dict[str, tuple[str, str]] = {
    "kd": (
        "Distilling the Knowledge in a Neural Network",
        """@article{hinton2015distilling,
  title   = {Distilling the Knowledge in a Neural Network},
  author  = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal = {arXiv preprint arXiv:1503.02531},
  year    = {2015}
}""",
    ),
    "funmatch": (
        "Knowledge distillation: A good teacher is patient and consistent",
        """@inproceedings{beyer2022knowledge,
  title     = {Knowledge Distillation: A Good Teacher Is Patient and Consistent},
  author    = {Beyer, Lucas and Zhai, Xiaohua and Royer, Am{\\'e}lie and Markeeva, Larisa and Anil, Rohan and
               Kolesnikov, Alexander},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {10925--10934},
  year      = {2022}
}""",
    ),
    "tlmixup": (_WANG_2022_TITLE, _WANG_2022),
    "tlcutmix": (_WANG_2022_TITLE, _WANG_2022),
    "pick": (_WANG_2022_TITLE, _WANG_2022),
    "slkd": (
        "Improving Knowledge Distillation via Transferring Learning Ability",
        """@article{liu2023improving,
  title   = {Improving Knowledge Distillation via Transferring Learning Ability},
  author  = {Liu, Long and Li, Tong and Cheng, Hui},
  journal = {arXiv preprint arXiv:2304.11923},
  year    = {2023}
}""",
    ),
    "fitnet": (
        "FitNets: Hints for Thin Deep Nets",
        """@inproceedings{romero2015fitnets,
  title     = {{FitNets}: Hints for Thin Deep Nets},
  author    = {Romero, Adriana and Ballas, Nicolas and Kahou, Samira Ebrahimi and Chassang, Antoine and
               Gatta, Carlo and Bengio, Yoshua},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2015}
}""",
    ),
    "at": (
        "Paying More Attention to Attention: Improving the Performance of Convolutional Neural Networks via "
        "Attention Transfer",
        """@inproceedings{zagoruyko2017paying,
  title     = {Paying More Attention to Attention: Improving the Performance of Convolutional Neural Networks
               via Attention Transfer},
  author    = {Zagoruyko, Sergey and Komodakis, Nikos},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2017}
}""",
    ),
    "fsp": (
        "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning",
        """@inproceedings{yim2017gift,
  title     = {A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning},
  author    = {Yim, Junho and Joo, Donggyu and Bae, Jihoon and Kim, Junmo},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {4133--4141},
  year      = {2017}
}""",
    ),
    "sp": (
        "Similarity-Preserving Knowledge Distillation",
        """@inproceedings{tung2019similarity,
  title     = {Similarity-Preserving Knowledge Distillation},
  author    = {Tung, Frederick and Mori, Greg},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2019}
}""",
    ),
    "pkt": (
        "Learning Deep Representations with Probabilistic Knowledge Transfer",
        """@inproceedings{passalis2018learning,
  title     = {Learning Deep Representations with Probabilistic Knowledge Transfer},
  author    = {Passalis, Nikolaos and Tefas, Anastasios},
  booktitle = {Proceedings of the European Conference on Computer Vision (ECCV)},
  year      = {2018}
}""",
    ),
    "rkd": (
        "Relational Knowledge Distillation",
        """@inproceedings{park2019relational,
  title     = {Relational Knowledge Distillation},
  author    = {Park, Wonpyo and Kim, Dongju and Lu, Yan and Cho, Minsu},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2019}
}""",
    ),
    "cc": (
        "Correlation Congruence for Knowledge Distillation",
        """@inproceedings{peng2019correlation,
  title     = {Correlation Congruence for Knowledge Distillation},
  author    = {Peng, Baoyun and Jin, Xiao and Liu, Jiaheng and Li, Dongsheng and Wu, Yichao and Liu, Yu and
               Zhou, Shunfeng and Zhang, Zhaoning},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2019}
}""",
    ),
    "vid": (
        "Variational Information Distillation for Knowledge Transfer",
        """@inproceedings{ahn2019variational,
  title     = {Variational Information Distillation for Knowledge Transfer},
  author    = {Ahn, Sungsoo and Hu, Shell Xu and Damianou, Andreas and Lawrence, Neil D. and Dai, Zhenwen},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2019}
}""",
    ),
    "crd": (
        "Contrastive Representation Distillation",
        """@inproceedings{tian2020contrastive,
  title     = {Contrastive Representation Distillation},
  author    = {Tian, Yonglong and Krishnan, Dilip and Isola, Phillip},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2020}
}""",
    ),
    "dkd": (
        "Decoupled Knowledge Distillation",
        """@inproceedings{zhao2022decoupled,
  title     = {Decoupled Knowledge Distillation},
  author    = {Zhao, Borui and Cui, Quan and Song, Renjie and Qiu, Yiyu and Liang, Jiajun},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}""",
    ),
    "kd_standardized": (
        "Logit Standardization in Knowledge Distillation",
        """@inproceedings{sun2024logit,
  title     = {Logit Standardization in Knowledge Distillation},
  author    = {Sun, Shangquan and Ren, Wenqi and Li, Jingzhi and Wang, Rui and Cao, Xiaochun},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}""",
    ),
    "dml": (
        "Deep Mutual Learning",
        """@inproceedings{zhang2018deep,
  title     = {Deep Mutual Learning},
  author    = {Zhang, Ying and Xiang, Tao and Hospedales, Timothy M. and Lu, Huchuan},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2018}
}""",
    ),
    "takd": (
        "Improved Knowledge Distillation via Teacher Assistant",
        """@inproceedings{mirzadeh2020improved,
  title     = {Improved Knowledge Distillation via Teacher Assistant},
  author    = {Mirzadeh, Seyed Iman and Farajtabar, Mehrdad and Li, Ang and Levine, Nir and Matsukawa, Akihiro and
               Ghasemzadeh, Hassan},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {34},
  year      = {2020}
}""",
    ),
    "deit": (
        "Training data-efficient image transformers & distillation through attention",
        """@inproceedings{touvron2021training,
  title     = {Training data-efficient image transformers \\& distillation through attention},
  author    = {Touvron, Hugo and Cord, Matthieu and Douze, Matthijs and Massa, Francisco and
               Sablayrolles, Alexandre and J{\\'e}gou, Herv{\\'e}},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning (ICML)},
  series    = {Proceedings of Machine Learning Research},
  volume    = {139},
  pages     = {10347--10357},
  year      = {2021}
}""",
    ),
    "fkd": (
        "A Fast Knowledge Distillation Framework for Visual Recognition",
        """@inproceedings{shen2022fast,
  title     = {A Fast Knowledge Distillation Framework for Visual Recognition},
  author    = {Shen, Zhiqiang and Xing, Eric},
  booktitle = {Proceedings of the European Conference on Computer Vision (ECCV)},
  year      = {2022}
}""",
    ),
}

#: method key -> (display name, one-sentence description used in the card body).
METHOD_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "kd": (
        "Knowledge distillation (KD)",
        "The student matches the teacher's temperature-softened class probabilities.",
    ),
    "funmatch": (
        "FunMatch",
        "Function matching: teacher and student see the very same aggressively augmented (mixup) views, "
        "trained for a long schedule.",
    ),
    "tlmixup": ("TLmixup", "Mixup images are used as extra distillation inputs, labelled by the teacher."),
    "tlcutmix": ("TLCutMix", "CutMix images are used as extra distillation inputs, labelled by the teacher."),
    "pick": (
        "CutMixPick",
        "Entropy-based selection keeps the most informative CutMix samples for distillation.",
    ),
    "slkd": (
        "SLKD",
        "The student also learns from the teacher's learning trajectory, to narrow the teacher-student capacity gap.",
    ),
    "fitnet": ("FitNets", "Intermediate student features regress the teacher's features (hints)."),
    "at": ("Attention transfer (AT)", "The student matches the teacher's spatial attention maps."),
    "fsp": (
        "FSP",
        "The student matches the teacher's flow-of-solution-procedure (Gram) matrices between layers.",
    ),
    "sp": (
        "Similarity-preserving KD (SP)",
        "The student preserves the teacher's pairwise sample similarities.",
    ),
    "pkt": (
        "Probabilistic knowledge transfer (PKT)",
        "The student matches the teacher's feature-space distribution.",
    ),
    "rkd": (
        "Relational KD (RKD)",
        "The student matches distance and angle relations between teacher embeddings.",
    ),
    "cc": (
        "Correlation congruence (CC)",
        "The student matches the correlation between instances of the teacher.",
    ),
    "vid": (
        "Variational information distillation (VID)",
        "Maximises mutual information with teacher features.",
    ),
    "crd": (
        "Contrastive representation distillation (CRD)",
        "A contrastive objective aligns the representations.",
    ),
    "dkd": (
        "Decoupled KD (DKD)",
        "The KD loss is split into target-class and non-target-class terms, weighted apart.",
    ),
    "kd_standardized": (
        "Logit standardisation",
        "Logits are z-score standardised before the softened KL divergence, so only their relations are matched.",
    ),
    "dml": (
        "Deep mutual learning (DML)",
        "Networks are trained together and learn from each other's predictions.",
    ),
    "takd": (
        "Teacher-assistant KD (TAKD)",
        "Distillation goes through an intermediate-size teacher assistant.",
    ),
    "deit": ("DeiT distillation", "A distillation token learns from the teacher's predictions."),
    "fkd": (
        "Fast KD (FKD)",
        "Teacher soft labels for random crops are precomputed and reused across epochs.",
    ),
}

_MAX_LISTED_LABELS = 30


@dataclass(kw_only=True)
class StudentCardInfo:
    """Everything the card says about a distilled student.

    ``metrics`` is the dict returned by ``trainer.evaluate()`` (keys such as ``eval_accuracy``,
    ``eval_top5_accuracy``, ``eval_teacher_accuracy``, ``eval_teacher_agreement``, ``eval_kl_to_teacher``;
    un-prefixed or ``test_``-prefixed keys are accepted too). Accuracies are fractions in [0, 1].
    ``teacher_params`` counts all teachers together; throughputs are in images per second.
    """

    repo_id: str | None = None
    student_name: str
    student_library: str
    teacher_ids: list[str]
    dataset_id: str
    dataset_config: str | None = None
    dataset_split: str | None = None
    label_names: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    student_params: int
    teacher_params: int
    student_throughput: float | None = None
    teacher_throughput: float | None = None
    methods: list[str]
    training_config: dict[str, Any] = field(default_factory=dict)
    training_curve_path: str | None = None
    image_size: int | tuple[int, int] | None = None
    teacher_image_size: int | tuple[int, int] | None = None
    base_model: str | None = None
    license: str = "apache-2.0"


def _check(info: StudentCardInfo) -> None:
    unknown = [m for m in info.methods if m not in METHOD_CITATIONS]
    if unknown:
        raise ValueError(
            f"Unknown distillation method(s) {', '.join(map(repr, unknown))}; "
            f"known methods: {', '.join(sorted(METHOD_CITATIONS))}"
        )
    if not info.methods:
        raise ValueError(
            f"methods must name at least one method; known methods: {', '.join(sorted(METHOD_CITATIONS))}"
        )
    if info.student_library not in LIBRARIES:
        raise ValueError(f"student_library must be one of {LIBRARIES}, got {info.student_library!r}")
    if not info.teacher_ids:
        raise ValueError("teacher_ids must list at least one teacher")
    for name in ("student_params", "teacher_params"):
        value = getattr(info, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _metric(metrics: Mapping[str, Any], name: str) -> tuple[str, float] | None:
    """The (key, value) of a metric, looked up with the ``eval_``, no, or ``test_`` prefix."""
    for key in (f"eval_{name}", name, f"test_{name}"):
        value = metrics.get(key)
        if value is not None:
            return key, value
    return None


def _value(metrics: Mapping[str, Any], name: str) -> float | None:
    found = _metric(metrics, name)
    return None if found is None else float(found[1])


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _count(n: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix} ({n:,})"
    return f"{n:,}"


def _size(size: int | Sequence[int] | None) -> str | None:
    if size is None:
        return None
    if isinstance(size, int):
        return f"{size} x {size}"
    return " x ".join(str(s) for s in size)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _hub_ref(ref: str) -> str:
    """A Markdown link to the Hub for ``namespace/name`` ids; other references (local paths, bare names) as code."""
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", ref) and ".." not in ref:
        return f"[`{ref}`](https://huggingface.co/{ref})"
    return f"`{ref}`"


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _card_data(info: StudentCardInfo, model_name: str) -> ModelCardData:
    dataset_name = (
        info.dataset_id if not info.dataset_config else f"{info.dataset_id} ({info.dataset_config})"
    )
    eval_results = []
    for metric, metric_type, metric_name in (
        ("accuracy", "accuracy", "Top-1 Accuracy"),
        ("top5_accuracy", "top_5_accuracy", "Top-5 Accuracy"),
    ):
        found = _metric(info.metrics, metric)
        if found is not None:
            eval_results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image Classification",
                    dataset_type=info.dataset_id,
                    dataset_name=dataset_name,
                    dataset_config=info.dataset_config,
                    dataset_split=info.dataset_split,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=float(found[1]),
                )
            )
    return ModelCardData(
        license=info.license,
        library_name=info.student_library,
        pipeline_tag="image-classification",
        tags=_unique(["distillation", "hf-distill", "image-classification", info.student_library]),
        datasets=[info.dataset_id],
        base_model=info.base_model,
        metrics=["accuracy"],
        model_name=model_name,
        eval_results=eval_results or None,
    )


def _template() -> jinja2.Template:
    text = (files("hf_distill") / "templates" / "model_card.md").read_text(encoding="utf-8")
    env = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    return env.from_string(text)


def render_model_card(info: StudentCardInfo) -> ModelCard:
    """Build the model card of a distilled student: YAML metadata (with a model-index) and a Markdown body."""
    _check(info)
    methods = _unique(info.methods)
    model_name = (info.repo_id or info.student_name).split("/")[-1]
    card_data = _card_data(info, model_name)

    metrics = info.metrics
    accuracy = _value(metrics, "accuracy")
    top5 = _value(metrics, "top5_accuracy")
    teacher_accuracy = _value(metrics, "teacher_accuracy")
    agreement = _value(metrics, "teacher_agreement")
    kl = _value(metrics, "kl_to_teacher")
    compression = info.teacher_params / info.student_params
    speedup = None
    if info.student_throughput and info.teacher_throughput:
        speedup = info.student_throughput / info.teacher_throughput

    dataset_display = f"`{info.dataset_id}`" + (
        f" (config `{info.dataset_config}`)" if info.dataset_config else ""
    )
    teacher_links = ", ".join(_hub_ref(t) for t in info.teacher_ids)
    library_display = "timm" if info.student_library == "timm" else "🤗 Transformers"

    summary = (
        f"`{model_name}` is a `{info.student_name}` image classifier distilled from "
        f"{', '.join(f'`{t}`' for t in info.teacher_ids)} on {dataset_display} with "
        f"{', '.join(METHOD_DESCRIPTIONS[m][0] for m in methods)}."
    )
    if accuracy is not None:
        summary += f" It reaches {_pct(accuracy)} top-1 accuracy"
        summary += f" (teacher: {_pct(teacher_accuracy)})" if teacher_accuracy is not None else ""
        summary += f" with {compression:.1f}x fewer parameters."
    else:
        summary += f" It has {compression:.1f}x fewer parameters than its teacher."

    has_top5 = top5 is not None
    has_throughput = info.student_throughput is not None or info.teacher_throughput is not None
    header = ["Model", "Parameters", "Top-1 accuracy"] + ["Top-5 accuracy"] * has_top5
    header += ["Throughput (images/s)"] * has_throughput
    rows = [
        ["Student (this model)", _count(info.student_params), _pct(accuracy)]
        + [_pct(top5)] * has_top5
        + ([f"{info.student_throughput:,.1f}" if info.student_throughput else "–"] if has_throughput else []),
        [
            "Teacher" + ("s" if len(info.teacher_ids) > 1 else ""),
            _count(info.teacher_params),
            _pct(teacher_accuracy),
        ]
        + ["–"] * has_top5
        + ([f"{info.teacher_throughput:,.1f}" if info.teacher_throughput else "–"] if has_throughput else []),
    ]
    results_table = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]

    highlights = []
    if agreement is not None:
        highlights.append(
            f"**Agreement with the teacher:** {_pct(agreement)} of the evaluation images get the same top-1 class."
        )
    if kl is not None:
        highlights.append(f"**KL divergence to the teacher** (temperature 1): {kl:.4f} nats per image.")
    if accuracy is not None and teacher_accuracy is not None:
        gap = 100 * (accuracy - teacher_accuracy)
        highlights.append(f"**Accuracy relative to the teacher:** {gap:+.2f} percentage points.")
    highlights.append(
        f"**Compression:** {compression:.1f}x fewer parameters than the teacher"
        f"{'s' if len(info.teacher_ids) > 1 else ''} ({100 / compression:.1f}% of the size)."
    )
    if speedup is not None:
        highlights.append(f"**Speed-up:** {speedup:.1f}x the teacher's throughput.")

    resolution = _size(info.image_size)
    teacher_resolution = _size(info.teacher_image_size)
    if resolution and teacher_resolution and teacher_resolution != resolution:
        resolution = f"{resolution} (teacher: {teacher_resolution})"
    elif not resolution and teacher_resolution:
        resolution = f"teacher: {teacher_resolution}"

    labels = [str(label) for label in info.label_names]
    label_summary = ", ".join(labels[:_MAX_LISTED_LABELS]) + (
        ", …" if len(labels) > _MAX_LISTED_LABELS else ""
    )

    method_rows = [
        {
            "key": m,
            "name": METHOD_DESCRIPTIONS[m][0],
            "description": METHOD_DESCRIPTIONS[m][1],
            "title": METHOD_CITATIONS[m][0],
        }
        for m in methods
    ]
    citations = _unique([METHOD_CITATIONS[m][1] for m in methods])
    config_rows = [(str(key), _cell(value)) for key, value in info.training_config.items()]

    content = _template().render(
        card_data=card_data.to_yaml(),
        info=info,
        title=model_name,
        summary=summary,
        library_display=library_display,
        teacher_links=teacher_links,
        dataset_display=dataset_display,
        resolution=resolution,
        label_summary=label_summary,
        results_table=results_table,
        highlights=highlights,
        methods=method_rows,
        config_rows=config_rows,
        citations=citations,
        base_model_ref=_hub_ref(info.base_model) if info.base_model else None,
        repo_ref=info.repo_id or f"your-username/{model_name}",
    )
    return ModelCard(content)


def plot_training_curve(log_history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Plot the training loss terms and the evaluation accuracy of ``trainer.state.log_history`` to a PNG.

    Loss terms are the logged keys starting with ``loss`` (``loss``, ``loss_kd``, ...); accuracy is
    ``eval_accuracy``. Both are drawn against ``step``. Returns the path written.
    """
    if not log_history:
        raise ValueError("log_history is empty: nothing to plot (train for at least one logging step first)")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # matplotlib is an optional dependency
        raise ImportError("plot_training_curve needs matplotlib: pip install matplotlib") from err

    losses: dict[str, tuple[list[float], list[float]]] = {}
    accuracy: tuple[list[float], list[float]] = ([], [])
    for index, entry in enumerate(log_history):
        step = entry.get("step", index)
        for key, value in entry.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue
            if key.startswith("loss"):
                xs, ys = losses.setdefault(key, ([], []))
                xs.append(step)
                ys.append(float(value))
            elif key == "eval_accuracy":
                accuracy[0].append(step)
                accuracy[1].append(float(value))
    if not losses and not accuracy[0]:
        raise ValueError(
            "log_history has no training loss ('loss*') or 'eval_accuracy' entries to plot; "
            f"keys seen: {sorted({k for e in log_history for k in e})}"
        )

    panels = int(bool(losses)) + int(bool(accuracy[0]))
    fig = Figure(figsize=(5.5 * panels, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    position = 0
    if losses:
        ax = axes[position]
        position += 1
        for key, (xs, ys) in sorted(losses.items()):
            ax.plot(xs, ys, label=key, marker="." if len(xs) < 30 else None)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("Training loss")
        ax.grid(alpha=0.3)
        ax.legend()
    if accuracy[0]:
        ax = axes[position]
        ax.plot(accuracy[0], [100 * y for y in accuracy[1]], marker="o", color="tab:green")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Evaluation accuracy")
        ax.grid(alpha=0.3)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path
