"""Feature taps on timm CNNs, timm ViTs, transformers models and plain modules; projector widths."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from hf_distill import DistillationTrainer
from hf_distill.features import (
    FeatureTap,
    FeatureTaps,
    Projector,
    build_feature_modules,
    probe_feature_shapes,
    train_labels_by_sample_id,
)
from hf_distill.losses import LOSSES
from hf_distill.trainer import DistillationModule

from .conftest import make_args, tiny_hf_resnet, tiny_timm


def tiny_hf_vit(seed: int = 0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=10,
    )
    return ViTForImageClassification(config).eval()


def test_timm_cnn_taps_follow_feature_info():
    model = tiny_timm("test_resnet").eval()
    x = torch.randn(2, 3, 32, 32)
    tap = FeatureTap(model, "timm", ["1", "layer3", -1, "pre_logits"])
    logits, features = tap(model, x)
    torch.testing.assert_close(logits, model(x))
    info = model.feature_info
    assert list(features) == ["1", "layer3", "-1", "pre_logits"]
    for key, stage in (("1", 1), ("layer3", 3), ("-1", 4)):
        expected = (2, info[stage]["num_chs"], 32 // info[stage]["reduction"], 32 // info[stage]["reduction"])
        assert features[key].shape == expected, key
    assert features["pre_logits"].shape == (2, model.num_features)
    # pre_logits is exactly what the classifier sees.
    torch.testing.assert_close(model.get_classifier()(features["pre_logits"]), logits)
    # The hook records only while the tap runs.
    model(x)
    assert tap._captured == {}


def test_timm_vit_tokens_become_maps_or_vectors():
    model = tiny_timm("test_vit").eval()
    x = torch.randn(2, 3, 32, 32)
    logits, features = FeatureTap(model, "timm", [0, "blocks.5"])(model, x)
    torch.testing.assert_close(logits, model(x))
    grid = 32 // model.patch_embed.patch_size[0]
    assert features["0"].shape == (2, model.embed_dim, grid, grid)
    # blocks.5 is the last block: its patch tokens (prefix tokens dropped) laid on the grid.
    tokens = model.forward_features(x)  # includes the final norm, so compare with the raw block output
    blocks_out = model.blocks(model.norm_pre(model._pos_embed(model.patch_embed(x))))
    patches = blocks_out[:, model.num_prefix_tokens :]
    expected = patches.transpose(1, 2).reshape(2, model.embed_dim, grid, grid)
    torch.testing.assert_close(features["blocks.5"], expected)
    assert tokens.shape[1] == grid * grid + model.num_prefix_tokens
    _, vectors = FeatureTap(model, "timm", [-1], layout="vector")(model, x)
    torch.testing.assert_close(vectors["-1"], expected.mean(dim=(2, 3)))


def test_transformers_vit_hidden_states():
    model = tiny_hf_vit()
    x = torch.randn(2, 3, 32, 32)
    logits, features = FeatureTap(model, "transformers", [1, -1, "pre_logits"])(model, x)
    out = model(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(logits, out.logits)
    for key, index in (("1", 1), ("-1", -1)):
        tokens = out.hidden_states[index][:, 1:]  # drop the class token
        torch.testing.assert_close(features[key], tokens.transpose(1, 2).reshape(2, 16, 4, 4))
    assert features["pre_logits"].shape == (2, 16)


def test_transformers_cnn_hidden_states_and_plain_module_names():
    model = tiny_hf_resnet().eval()
    x = torch.randn(2, 3, 32, 32)
    _, features = FeatureTap(model, "transformers", [-1, "pre_logits"])(model, x)
    out = model(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(features["-1"], out.hidden_states[-1])
    assert features["pre_logits"].shape == (2, 16)

    plain = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    )
    _, features = FeatureTap(plain, "torch", ["1"])(plain, x)
    torch.testing.assert_close(features["1"], plain[1](plain[0](x)))


def test_bad_layers_are_refused_with_the_field_name():
    model = tiny_timm("test_resnet")
    with pytest.raises(ValueError, match="student_feature_layers: unknown layer 'nope'"):
        FeatureTap(model, "timm", ["nope"], field_name="student_feature_layers")
    with pytest.raises(ValueError, match="stage index 9 is out of range"):
        FeatureTap(model, "timm", [9])
    plain = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="stage index 3 needs a timm model"):
        FeatureTap(plain, "torch", [3])


def test_projector_shapes():
    maps = Projector((2, 8, 8, 8), (2, 16, 4, 4))
    assert maps(torch.randn(2, 8, 8, 8)).shape == (2, 16, 4, 4)
    up = Projector((2, 8, 2, 2), (2, 16, 4, 4))
    assert up(torch.randn(2, 8, 2, 2)).shape == (2, 16, 4, 4)
    assert Projector((2, 8, 4, 4), (2, 5)).forward(torch.randn(2, 8, 4, 4)).shape == (2, 5)
    with pytest.raises(ValueError, match="cannot project"):
        Projector((2, 8), (2, 16, 4, 4))


@pytest.mark.parametrize(
    "student, teacher, kind, kernel, stride",
    [
        ((2, 8, 8, 8), (2, 16, 4, 4), nn.Conv2d, (3, 3), (2, 2)),  # h_s = 2 h_t
        ((2, 8, 4, 4), (2, 16, 8, 8), nn.ConvTranspose2d, (4, 4), (2, 2)),  # 2 h_s = h_t
        ((2, 8, 7, 5), (2, 16, 3, 3), nn.Conv2d, (5, 3), (1, 1)),  # the paper's valid kernel
        ((2, 8, 4, 4), (2, 16, 4, 4), nn.Conv2d, (1, 1), (1, 1)),  # equal sizes: 1x1
        ((2, 8, 3, 3), (2, 16, 4, 5), nn.ConvTranspose2d, (2, 3), (1, 1)),  # smaller, not half
    ],
)
def test_conv_regressor_output_matches_the_hint(student, teacher, kind, kernel, stride):
    projector = Projector(student, teacher)
    conv, bn, relu = projector.proj
    assert type(conv) is kind and conv.kernel_size == kernel and conv.stride == stride
    assert (conv.in_channels, conv.out_channels) == (student[1], teacher[1])
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    x = torch.randn(*student)
    out = projector(x)
    assert out.shape == teacher and (out >= 0).all()
    # the conv itself already gives the hint's size: no resizing after it
    torch.testing.assert_close(out, relu(bn(conv(x))))
    assert len(Projector(student, teacher, relu=False).proj) == 2


def test_1x1_projector_is_still_selectable():
    projector = Projector((2, 8, 8, 8), (2, 16, 4, 4), regressor="1x1")
    conv, bn = projector.proj
    assert conv.kernel_size == (1, 1) and conv.bias is None
    x = torch.randn(2, 8, 8, 8)
    expected = torch.nn.functional.adaptive_avg_pool2d(bn(conv(x)), (4, 4))
    torch.testing.assert_close(projector(x), expected)
    with pytest.raises(ValueError, match="regressor'\\] must be one of"):
        Projector((2, 8, 8, 8), (2, 16, 4, 4), regressor="mlp")
    with pytest.raises(ValueError, match="regressor: '1x1'"):
        Projector((2, 8, 8, 2), (2, 16, 4, 4))  # one side larger, the other smaller


def _vector_taps(batch: int = 2) -> FeatureTaps:
    return FeatureTaps(None, None, [torch.Size([batch, 8])], [torch.Size([batch, 12])])


def test_crd_module_gets_exact_sampling_and_the_labels():
    term = ("crd", LOSSES["crd"], 1.0, {"num_negatives": 4})
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    (crd,) = build_feature_modules(_vector_taps(), [term], 6, seed=0, train_labels=labels).values()
    assert crd.negative_sampling == "exact"
    negatives = crd.sample_negatives(6, torch.arange(6))
    assert (labels[negatives] != labels[:, None]).all()
    with pytest.raises(
        ValueError, match=r"loss_kwargs\['crd'\]: negative_sampling='exact'.*negative_sampling: uniform"
    ):
        build_feature_modules(_vector_taps(), [term], 6, seed=0, train_labels=None)
    uniform = ("crd", LOSSES["crd"], 1.0, {"num_negatives": 4, "negative_sampling": "uniform"})
    (crd,) = build_feature_modules(_vector_taps(), [uniform], 6, seed=0).values()
    assert crd.negative_sampling == "uniform"


def test_fitnet_regressor_kind_comes_from_loss_kwargs():
    taps = FeatureTaps(None, None, [torch.Size([2, 8, 8, 8])], [torch.Size([2, 16, 4, 4])])
    for params, kind in (({}, "conv"), ({"regressor": "1x1"}, "1x1")):
        (module,) = build_feature_modules(taps, [("fitnet", LOSSES["fitnet"], 1.0, params)], 4).values()
        assert module.projectors["0"].regressor == kind
    params = {"regressor_relu": False}
    (module,) = build_feature_modules(taps, [("fitnet", LOSSES["fitnet"], 1.0, params)], 4).values()
    assert not any(isinstance(m, nn.ReLU) for m in module.modules())


def test_train_labels_by_sample_id():
    from datasets import Dataset

    plain = Dataset.from_dict({"label": [2, 0, 1]})
    assert train_labels_by_sample_id(plain).tolist() == [2, 0, 1]
    shuffled = Dataset.from_dict({"label": [2, 0, 1], "sample_id": [2, 0, 1]})
    assert train_labels_by_sample_id(shuffled).tolist() == [0, 1, 2]  # indexed by sample id, not row
    assert train_labels_by_sample_id(Dataset.from_dict({"label": [2, -1, 1]})) is None  # unlabelled
    assert train_labels_by_sample_id(Dataset.from_dict({"image": [0, 1]})) is None
    assert train_labels_by_sample_id(Dataset.from_dict({"y": [1, 0]}), "y").tolist() == [1, 0]
    assert train_labels_by_sample_id(None) is None


def test_projector_widths_come_from_a_dummy_forward(tmp_path, digits, timm_teacher_dir):
    args = make_args(
        tmp_path,
        loss_types=["fitnet"],
        loss_weights=[1.0],
        student_feature_layers=["stages.2", "-1"],
        teacher_feature_layers=["layer3", "-1"],
    )
    trainer = DistillationTrainer(
        model="test_convnext", teacher_model=timm_teacher_dir, args=args, train_dataset=digits["train"]
    )
    projectors = trainer.auxiliary_module("fitnet").projectors
    s_info, t_info = trainer.student.feature_info, trainer.teacher.module.feature_info
    convs = [projectors[str(i)].proj[0] for i in range(2)]
    assert (convs[0].in_channels, convs[0].out_channels) == (s_info[2]["num_chs"], t_info[3]["num_chs"])
    assert (convs[1].in_channels, convs[1].out_channels) == (s_info[-1]["num_chs"], t_info[-1]["num_chs"])
    shapes = probe_feature_shapes(trainer.feature_taps.teacher, trainer.teacher.module, 32)
    assert [tuple(s) for s in shapes] == [tuple(s) for s in trainer.feature_taps.teacher_shapes]


def test_plain_kd_has_no_taps(tmp_path, digits, timm_teacher_dir):
    trainer = DistillationTrainer(
        model="test_resnet",
        teacher_model=timm_teacher_dir,
        args=make_args(tmp_path),
        train_dataset=digits["train"],
    )
    assert trainer.feature_taps is None
    assert not isinstance(trainer.model, DistillationModule)
    hooked = [m for m in trainer.teacher.module.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert not hooked


def test_feature_terms_without_layers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="student_feature_layers: is empty"):
        make_args(tmp_path, loss_types=["at"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="teacher_feature_layers: has 1 entries"):
        make_args(tmp_path, student_feature_layers=["1", "2"], teacher_feature_layers=["1"])
    with pytest.raises(ValueError, match="feature_layout: must be"):
        make_args(tmp_path, feature_layout="grid")


def test_vit_teacher_cnn_student_pair(tmp_path, digits):
    from .conftest import save_in_hub_layout

    teacher_dir = save_in_hub_layout(tiny_timm("test_vit", seed=3), tmp_path / "vit-teacher")
    args = make_args(
        tmp_path,
        loss_types=["fitnet", "at"],
        loss_weights=[1.0, 1.0],
        student_feature_layers=["-1"],
        teacher_feature_layers=["-1"],
        max_steps=1,
    )
    trainer = DistillationTrainer(
        model="test_resnet", teacher_model=teacher_dir, args=args, train_dataset=digits["train"]
    )
    assert trainer.feature_taps.teacher_shapes[0][1:] == (timm.create_model("test_vit").embed_dim, 2, 2)
    trainer.train()
    assert all("loss_at" in e and "loss_fitnet" in e for e in trainer.state.log_history if "loss" in e)
