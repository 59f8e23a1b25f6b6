"""Tests for the distilled-student model card and the training-curve plot."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from huggingface_hub import ModelCard

from hf_distill.model_card import (
    METHOD_CITATIONS,
    METHOD_DESCRIPTIONS,
    StudentCardInfo,
    plot_training_curve,
    render_model_card,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

METRICS = {
    "eval_loss": 0.41,
    "eval_accuracy": 0.9512,
    "eval_top5_accuracy": 0.9987,
    "eval_teacher_accuracy": 0.9733,
    "eval_teacher_agreement": 0.9601,
    "eval_kl_to_teacher": 0.0873,
    "eval_runtime": 1.2,
    "epoch": 3.0,
}


def make_info(**overrides) -> StudentCardInfo:
    fields = dict(
        repo_id="someone/resnet18-digits-distilled",
        student_name="resnet18",
        student_library="timm",
        teacher_ids=["someone/vit-base-digits"],
        dataset_id="sklearn/digits",
        label_names=[str(i) for i in range(10)],
        metrics=dict(METRICS),
        student_params=11_181_642,
        teacher_params=85_806_346,
        student_throughput=2400.0,
        teacher_throughput=310.0,
        methods=["funmatch", "kd"],
        training_config={
            "learning_rate": 3e-4,
            "num_train_epochs": 3,
            "temperature": 1.0,
            "mix_mode": "batch",
        },
        training_curve_path="training_curve.png",
        image_size=224,
        teacher_image_size=384,
        base_model="timm/resnet18.a1_in1k",
    )
    fields.update(overrides)
    return StudentCardInfo(**fields)


def bibtex_keys(text: str) -> set[str]:
    return set(re.findall(r"^@\w+\{([^,\s]+),", text, flags=re.MULTILINE))


def method_key(method: str) -> str:
    return next(iter(bibtex_keys(METHOD_CITATIONS[method][1])))


# ----------------------------------------------------------------------------- metadata


def test_card_metadata_round_trips(tmp_path):
    card = render_model_card(make_info())
    assert isinstance(card, ModelCard)
    reparsed = ModelCard(str(card))
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    for parsed in (reparsed, loaded):
        data = parsed.data
        assert data.library_name == "timm"
        assert data.pipeline_tag == "image-classification"
        assert {"distillation", "hf-distill", "image-classification", "timm"} <= set(data.tags)
        assert data.datasets == ["sklearn/digits"]
        assert data.base_model == "timm/resnet18.a1_in1k"
        assert data.license == "apache-2.0"
        results = {r.metric_type: r.metric_value for r in data.eval_results}
        assert results == {
            "accuracy": METRICS["eval_accuracy"],
            "top_5_accuracy": METRICS["eval_top5_accuracy"],
        }
        for result in data.eval_results:
            assert result.task_type == "image-classification"
            assert result.dataset_type == "sklearn/digits"
    assert loaded.text == card.text


def test_transformers_student_metadata_and_optional_fields():
    info = make_info(
        student_library="transformers",
        student_name="microsoft/resnet-18",
        base_model=None,
        repo_id=None,
        dataset_id="uoft-cs/cifar10",
        dataset_config="plain_text",
        metrics={"eval_accuracy": 0.91},
        student_throughput=None,
        teacher_throughput=None,
        training_curve_path=None,
        training_config={},
        methods=["dkd"],
        teacher_ids=["./teachers/vit-large", "google/vit-base-patch16-224"],
        teacher_params=390_000_000,
    )
    card = ModelCard(str(render_model_card(info)))
    assert "[`google/vit-base-patch16-224`](https://huggingface.co/google/vit-base-patch16-224)" in card.text
    assert "`./teachers/vit-large`" in card.text and "huggingface.co/./teachers" not in card.text
    assert "**Teachers:**" in card.text
    assert card.data.library_name == "transformers"
    assert "transformers" in card.data.tags and "timm" not in card.data.tags
    assert card.data.base_model is None
    assert card.data.datasets == ["uoft-cs/cifar10"]
    assert [(r.metric_type, r.metric_value, r.dataset_config) for r in card.data.eval_results] == [
        ("accuracy", 0.91, "plain_text")
    ]
    assert "Speed-up" not in card.text and "Throughput" not in card.text
    assert "Training curve" not in card.text and "Hyper-parameters" not in card.text
    assert "Top-5" not in card.text


def test_metrics_without_eval_prefix_and_no_accuracy():
    card = render_model_card(make_info(metrics={"accuracy": 0.5, "top5_accuracy": 0.9}))
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "accuracy": 0.5,
        "top_5_accuracy": 0.9,
    }
    bare = ModelCard(str(render_model_card(make_info(metrics={}))))
    assert not bare.data.eval_results
    assert bare.data.library_name == "timm"


# ----------------------------------------------------------------------------- body


def test_body_reports_results_and_configuration():
    text = render_model_card(make_info()).text
    assert "someone/vit-base-digits" in text
    assert "95.12%" in text  # student top-1
    assert "97.33%" in text  # teacher top-1
    assert "99.87%" in text  # top-5
    assert "96.01%" in text  # agreement
    assert "0.0873" in text  # KL
    assert "11,181,642" in text and "85,806,346" in text
    assert f"{85_806_346 / 11_181_642:.1f}x fewer parameters" in text
    assert f"{2400 / 310:.1f}x" in text  # speed-up
    assert "| `learning_rate` | 0.0003 |" in text
    assert "| `mix_mode` | batch |" in text
    assert "![Training losses and evaluation accuracy](training_curve.png)" in text
    assert "224 x 224 (teacher: 384 x 384)" in text
    assert "## Intended uses" in text and "## Limitations" in text


def test_bibtex_for_every_used_method_and_no_other():
    methods = ["funmatch", "tlcutmix", "pick", "dkd", "kd_standardized"]
    text = render_model_card(make_info(methods=methods)).text
    used = {method_key(m) for m in methods}
    assert bibtex_keys(text) == used
    # tlcutmix and pick come from the same paper: cited once
    assert text.count("@inproceedings{wang2022makes,") == 1
    for method in methods:
        assert METHOD_CITATIONS[method][0] in text
        assert METHOD_DESCRIPTIONS[method][0] in text


@pytest.mark.parametrize("method", sorted(METHOD_CITATIONS))
def test_each_method_renders_its_own_citation(method):
    text = render_model_card(make_info(methods=[method])).text
    assert bibtex_keys(text) == {method_key(method)}


def test_citation_table_is_complete_and_well_formed():
    required = {
        "kd", "funmatch", "tlmixup", "tlcutmix", "pick", "slkd", "fitnet", "at", "fsp", "sp", "pkt",
        "rkd", "cc", "vid", "crd", "dkd", "kd_standardized", "dml", "takd", "deit", "fkd",
    }  # fmt: skip
    assert required <= set(METHOD_CITATIONS)
    assert set(METHOD_DESCRIPTIONS) == set(METHOD_CITATIONS)
    for key, (title, bibtex) in METHOD_CITATIONS.items():
        assert title and len(bibtex_keys(bibtex)) == 1, key
        assert bibtex.count("{") == bibtex.count("}"), key
        assert re.search(r"year\s*=\s*\{\d{4}\}", bibtex), key
    years = {
        key: re.search(r"year\s*=\s*\{(\d{4})\}", bib).group(1) for key, (_, bib) in METHOD_CITATIONS.items()
    }
    assert years["kd"] == "2015" and years["funmatch"] == "2022" and years["deit"] == "2021"
    assert years["fitnet"] == "2015" and years["at"] == "2017" and years["kd_standardized"] == "2024"
    assert "Neural Information Processing Systems" in METHOD_CITATIONS["pick"][1]
    assert "2304.11923" in METHOD_CITATIONS["slkd"][1]


def test_unknown_method_is_rejected_with_known_keys():
    with pytest.raises(ValueError) as excinfo:
        render_model_card(make_info(methods=["kd", "telepathy"]))
    message = str(excinfo.value)
    assert "telepathy" in message
    for key in ("kd", "funmatch", "dkd", "deit"):
        assert key in message


def test_invalid_library_and_params():
    with pytest.raises(ValueError, match="student_library"):
        render_model_card(make_info(student_library="keras"))
    with pytest.raises(ValueError, match="student_params"):
        render_model_card(make_info(student_params=0))


def test_timm_snippet_only_for_timm_students():
    timm_text = render_model_card(make_info()).text
    assert 'timm.create_model("hf-hub:someone/resnet18-digits-distilled", pretrained=True)' in timm_text
    assert 'pipeline("image-classification", model="someone/resnet18-digits-distilled")' in timm_text

    hf_text = render_model_card(
        make_info(student_library="transformers", student_name="microsoft/resnet-18")
    ).text
    assert "timm.create_model" not in hf_text and "import timm" not in hf_text
    assert 'pipeline("image-classification", model="someone/resnet18-digits-distilled")' in hf_text


def test_card_is_plain_data_class():
    info = make_info()
    changed = replace(info, license="mit")
    assert ModelCard(str(render_model_card(changed))).data.license == "mit"


# ----------------------------------------------------------------------------- training curve


def test_plot_training_curve_writes_png(tmp_path):
    history = [
        {"loss": 2.3, "loss_kd": 1.5, "loss_ce": 0.8, "learning_rate": 1e-3, "epoch": 0.5, "step": 10},
        {"loss": 1.7, "loss_kd": 1.1, "loss_ce": 0.6, "learning_rate": 9e-4, "epoch": 1.0, "step": 20},
        {"eval_loss": 1.2, "eval_accuracy": 0.71, "epoch": 1.0, "step": 20},
        {"loss": 1.1, "loss_kd": 0.7, "loss_ce": 0.4, "learning_rate": 5e-4, "epoch": 1.5, "step": 30},
        {"eval_loss": 0.9, "eval_accuracy": 0.83, "epoch": 2.0, "step": 40},
        {"train_runtime": 12.0, "train_loss": 1.6, "epoch": 2.0, "step": 40},
    ]
    out = plot_training_curve(history, tmp_path / "plots" / "training_curve.png")
    assert out == tmp_path / "plots" / "training_curve.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


def test_plot_training_curve_with_only_losses(tmp_path):
    out = plot_training_curve([{"loss": 1.0, "step": 1}, {"loss": 0.5, "step": 2}], tmp_path / "c.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_training_curve_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_training_curve([], tmp_path / "c.png")
    with pytest.raises(ValueError, match="no training loss"):
        plot_training_curve([{"learning_rate": 1e-3, "step": 1}], tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()
