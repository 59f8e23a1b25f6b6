"""Deep mutual learning (peers train together, each savable) and the TAKD chain."""

from __future__ import annotations

import os

import pytest
import timm
import torch

from hf_distill import DistillationTrainer
from hf_distill.losses import dml_loss
from hf_distill.online import TAKDConfig, evaluate_peer, peer_names, run_takd, takd_stages

from .conftest import SMALL, make_args


def test_dml_loss_matches_the_paper_formula():
    torch.manual_seed(0)
    cohort = [torch.randn(4, 5, requires_grad=True) for _ in range(3)]
    values = dml_loss(cohort, temperature=1.0)
    probs = [z.detach().softmax(-1) for z in cohort]
    for k, value in enumerate(values):
        log_p_k = cohort[k].detach().log_softmax(-1)
        expected = sum((probs[j] * (probs[j].log() - log_p_k)).sum(-1).mean() for j in range(3) if j != k) / 2
        torch.testing.assert_close(value, expected)
    values[0].backward()
    assert cohort[0].grad is not None and cohort[1].grad is None and cohort[2].grad is None
    with pytest.raises(ValueError, match="at least two"):
        dml_loss(cohort[:1])


def test_dml_trains_every_peer_and_saves_each(tmp_path, digits):
    args = make_args(
        tmp_path,
        alpha=0.0,
        temperature=1.0,
        loss_types=["dml"],
        loss_weights=[1.0],
        peer_model_names_or_paths=["test_resnet", "test_convnext"],
        max_steps=2,
    )
    trainer = DistillationTrainer(
        model="test_resnet", args=args, train_dataset=digits["train"], eval_dataset=digits["test"]
    )
    assert trainer.teacher is None and peer_names(trainer) == ["peer1", "peer2"]
    before = {
        name: {k: v.clone() for k, v in trainer.auxiliary_module(name).state_dict().items()}
        for name in peer_names(trainer)
    }
    student_before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.train()
    assert any(
        not torch.equal(v, student_before[k])
        for k, v in trainer.student.state_dict().items()
        if v.is_floating_point()
    )
    for name, state in before.items():
        after = trainer.auxiliary_module(name).state_dict()
        assert any(not torch.equal(v, after[k]) for k, v in state.items() if v.is_floating_point()), name
    for name in peer_names(trainer):
        out = tmp_path / name
        trainer.save_peer(name, str(out))
        reloaded = timm.create_model(f"local-dir:{out}", pretrained=True)
        expected = trainer.auxiliary_module(name).model.state_dict()
        for key, value in reloaded.state_dict().items():
            torch.testing.assert_close(value, expected[key].cpu(), msg=key)
        assert 0.0 <= evaluate_peer(trainer, name, digits["test"]) <= 1.0
    trainer.save_model()  # the student alone: no peer weights inside
    saved = timm.create_model(f"local-dir:{args.output_dir}", pretrained=True)
    assert set(saved.state_dict()) == set(trainer.student.state_dict())
    with pytest.raises(KeyError, match="no auxiliary module named 'peer9'"):
        trainer.save_peer("peer9", str(tmp_path / "x"))


def test_dml_needs_peers(tmp_path):
    with pytest.raises(ValueError, match="peer_model_names_or_paths"):
        make_args(tmp_path, alpha=0.0, loss_types=["dml"], loss_weights=[1.0])


def test_takd_chains_teacher_assistant_student(tmp_path, digits, timm_teacher_dir):
    base = make_args(tmp_path).to_dict()
    base = {k: v for k, v in base.items() if k in TAKDConfig.__dataclass_fields__ and not k.startswith("_")}
    base.update(
        teacher_model_name_or_path=timm_teacher_dir,
        student_model_name_or_path="test_resnet",
        assistant_model_names_or_paths=["test_convnext"],
        max_steps=1,
        report_to=[],
    )
    args = TAKDConfig(**{k: v for k, v in base.items() if v is not None or k.endswith("path")})
    stages = takd_stages(args)
    assert [name for name, _ in stages] == ["assistant1", "student"]
    assert stages[0][1].teacher_model_name_or_path == timm_teacher_dir
    assert stages[1][1].teacher_model_name_or_path == stages[0][1].output_dir
    results = run_takd(args, digits["train"], digits["test"])
    assistant = timm.create_model(f"local-dir:{stages[0][1].output_dir}", pretrained=True)
    assert assistant.default_cfg["architecture"] == "test_convnext"
    student = timm.create_model(f"local-dir:{args.output_dir}", pretrained=True)
    assert student.default_cfg["architecture"] == "test_resnet"
    assert "eval_accuracy" in results["student"] and os.path.isdir(results["assistant1"]["output_dir"])
    assert student.eval()(torch.zeros(1, 3, SMALL, SMALL)).shape == (1, 10)


def test_takd_needs_an_assistant(tmp_path):
    with pytest.raises(ValueError, match="assistant_model_names_or_paths"):
        TAKDConfig(output_dir=str(tmp_path), use_cpu=True)


def _crd_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from hf_distill.features import CRDModule

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        crd = CRDModule(-1, 4, 4, num_samples=6, feat_dim=3, num_negatives=2, momentum=0.5, seed=0)
        ids = torch.tensor(
            [rank * 3, rank * 3 + 1, rank * 3 + 2][: 3 - rank]
        )  # ranks hold different batch sizes
        embedding = torch.nn.functional.normalize(
            torch.randn(len(ids), 3, generator=torch.Generator().manual_seed(rank)), dim=1
        )
        crd._update_memory(crd.memory_s, embedding, ids)
        torch.save(crd.memory_s.clone(), f"{out_dir}/memory{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two processes (gloo), each importing torch and hf_distill
def test_crd_memory_updates_are_shared_across_processes(tmp_path):
    """Under DDP every process writes every process's samples, so the banks stay identical (and DDP's buffer
    broadcast from rank 0 loses nothing)."""
    import torch.multiprocessing as mp

    from hf_distill.features import CRDModule

    mp.spawn(_crd_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = {r: torch.load(tmp_path / f"memory{r}.pt") for r in range(2)}
    torch.testing.assert_close(results[0], results[1])
    reference = CRDModule(-1, 4, 4, num_samples=6, feat_dim=3, num_negatives=2, momentum=0.5, seed=0)
    for rank, ids in ((0, [0, 1, 2]), (1, [3, 4])):
        emb = torch.nn.functional.normalize(
            torch.randn(len(ids), 3, generator=torch.Generator().manual_seed(rank)), dim=1
        )
        reference._update_memory(reference.memory_s, emb, torch.tensor(ids))
    torch.testing.assert_close(results[0], reference.memory_s)
