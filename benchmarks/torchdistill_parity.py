"""Cross-check hf_distill's loss values against torchdistill's implementations on identical random inputs.

    .venv/bin/pip install -e ".[bench]"   # torchdistill (installed with --no-deps if it would move torch)
    .venv/bin/python benchmarks/torchdistill_parity.py

Writes benchmarks/results/torchdistill_parity.md. Each row states the convention that relates the two values
(our value = factor * torchdistill's value) and the relative error after applying it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hf_distill.losses import at_loss, kd_loss, kd_loss_standardized, pkt_loss, rkd_loss, sp_loss


def io(tensor):
    return {"m": {"output": tensor}}


def rows() -> list[tuple[str, float, float, str]]:
    from torchdistill.losses import mid_level as td

    torch.manual_seed(0)
    batch, classes, temperature = 16, 10, 4.0
    s_logits, t_logits = torch.randn(batch, classes), torch.randn(batch, classes)
    labels = torch.randint(0, classes, (batch,))
    s_map, t_map = torch.randn(batch, 8, 6, 6), torch.randn(batch, 16, 6, 6)
    s_emb, t_emb = torch.randn(batch, 12), torch.randn(batch, 20)
    out = []

    kd = td.KDLoss("m", "output", "m", "output", temperature=temperature, alpha=0.0)
    out.append(
        (
            "KD",
            float(kd_loss(s_logits, t_logits, temperature)),
            float(kd(io(s_logits), io(t_logits))) * temperature**2,
            "torchdistill returns KL without tau^2 when alpha=0 (compared x tau^2); its alpha weights CE, ours weights KD",
        )
    )
    kd_mix = td.KDLoss("m", "output", "m", "output", temperature=temperature, alpha=0.3)
    ours = 0.3 * torch.nn.functional.cross_entropy(s_logits, labels) + 0.7 * kd_loss(
        s_logits, t_logits, temperature
    )
    out.append(
        (
            "KD, CE mix",
            float(ours),
            float(kd_mix(io(s_logits), io(t_logits), labels)),
            "torchdistill alpha=0.3 == our alpha=0.7 ((1 - alpha) * CE + alpha * KD)",
        )
    )
    at = td.ATLoss(
        {
            "p": {
                "student": {"io": "output", "path": "m"},
                "teacher": {"io": "output", "path": "m"},
                "weight": 1,
            }
        },
        mode="code",
    )
    out.append(("AT", float(at_loss(s_map, t_map)), float(at(io(s_map), io(t_map))), "same convention"))
    pkt = td.PKTLoss("m", "output", "m", "output")
    out.append(("PKT", float(pkt_loss(s_emb, t_emb)), float(pkt(io(s_emb), io(t_emb))), "same convention"))
    rkd = td.RKDLoss("m", "m", dist_factor=25.0, angle_factor=50.0, reduction="mean")
    out.append(("RKD", float(rkd_loss(s_emb, t_emb)), float(rkd(io(s_emb), io(t_emb))), "same convention"))
    sp = td.SPKDLoss("m", "m", reduction="batchmean")
    out.append(
        (
            "SP",
            float(sp_loss(s_map, t_map)),
            float(sp(io(s_map), io(t_map))),
            "differs: torchdistill calls normalize(G, 1), i.e. p=1 (L1 rows); the paper and we use L2 rows",
        )
    )

    def sp_l1(s, t):  # our sp_loss with torchdistill's L1 row normalisation, to show the rest agrees
        g = [torch.nn.functional.normalize(x.flatten(1) @ x.flatten(1).t(), p=1, dim=1) for x in (s, t)]
        return (g[0] - g[1]).pow(2).sum() / s.shape[0] ** 2

    out.append(
        (
            "SP with L1 rows",
            float(sp_l1(s_map, t_map)),
            float(sp(io(s_map), io(t_map))),
            "same once rows are L1",
        )
    )
    if hasattr(td, "LogitStdKDLoss"):
        try:
            std = td.LogitStdKDLoss("m", "output", "m", "output", temperature=temperature, alpha=0.0)
            value = float(std(io(s_logits), io(t_logits)))
            out.append(
                (
                    "KD, standardised logits",
                    float(kd_loss_standardized(s_logits, t_logits, temperature)),
                    value * temperature**2,
                    "as KD; compared x tau^2",
                )
            )
        except Exception as error:  # signature differs between torchdistill versions
            out.append(("KD, standardised logits", float("nan"), float("nan"), f"not compared: {error}"))
    return out


def main() -> None:
    import torchdistill

    lines = [
        "# hf_distill vs torchdistill loss values",
        "",
        f"torchdistill {torchdistill.__version__}, torch {torch.__version__}, seed 0, identical random inputs.",
        "Command: `.venv/bin/python benchmarks/torchdistill_parity.py`",
        "",
        "| loss | hf_distill | torchdistill (rescaled) | rel. error | convention |",
        "|---|---|---|---|---|",
    ]
    for name, ours, theirs, note in rows():
        rel = abs(ours - theirs) / max(abs(theirs), 1e-12)
        lines.append(f"| {name} | {ours:.6g} | {theirs:.6g} | {rel:.1e} | {note} |")
    text = "\n".join(lines) + "\n"
    path = Path(__file__).parent / "results" / "torchdistill_parity.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
