"""The data path: the benchmark runs with one command and its views are torchvision's
(benchmarks/dataloader.py); the recipes' GPU configs give the loader workers and pinned memory."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torchvision")


def _benchmark():
    path = Path(__file__).parents[1] / "benchmarks" / "dataloader.py"
    spec = importlib.util.spec_from_file_location("hf_distill_dataloader_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_reports_every_variant_and_torchvision_pixels(tmp_path):
    out, jsonl = tmp_path / "dataloader.md", tmp_path / "runs.jsonl"
    modes = ["same/ic", "ind/ic", "funmatch (mixup)"]
    _benchmark().main(
        ["--images", "8", "--width", "120", "--height", "90", "--batch-size", "4", "--repeats", "1"]
        + ["--modes", *modes, "--out", str(out), "--jsonl", str(jsonl)]
    )
    results = {r["mode"]: r for r in map(json.loads, jsonl.read_text().splitlines())}
    assert list(results) == modes
    for name, result in results.items():
        expected = {"collator", "loader", "timm", "tv", "tv-fn", "tv-draw", "tv-loader"}
        if name.startswith("funmatch"):
            expected.add("tv-mix")
        assert set(result["views_per_s"]) == expected
        assert all(rate > 0 for rate in result["views_per_s"].values())
    assert results["same/ic"]["views_per_image"] == 1 and results["ind/ic"]["views_per_image"] == 2
    for name in ["same/ic", "ind/ic"]:  # small images: every sample decoded at full scale
        assert results[name]["same_pixels_as_tv"] == {"same": 4, "full": 4, "reduced": 0}
    assert results["funmatch (mixup)"]["same_pixels_as_tv"] is None
    report = out.read_text()
    assert all(f"| {name} |" in report for name in modes)
    assert "| same/ic | 1 |" in report and "4/4 |" in report


def test_gpu_recipe_configs_set_loader_workers_and_pinned_memory():
    """A config for a Hub dataset is a GPU run: the collator renders every view on the CPU (~700-1,500 views/s per
    core, benchmarks/results/dataloader.md), so it needs several workers per device and page-locked batches."""
    configs = sorted((Path(__file__).parents[1] / "recipes" / "configs").glob("*.yaml"))
    gpu = {path.name: yaml.safe_load(path.read_text()) for path in configs}
    gpu = {name: config for name, config in gpu.items() if config.get("dataset_name")}
    assert len(gpu) >= 10
    for name, config in gpu.items():
        assert config.get("dataloader_num_workers", 0) >= 4, name
        assert config.get("dataloader_pin_memory") is True, name
        assert not config.get("dataloader_persistent_workers"), name  # refused: views follow the epoch
