"""benchmarks/generation_quality.py keeps running: its variants come from the registry, and a tiny
run (4 samples, 2 sampler steps) writes the table, the JSON and the grids."""

from __future__ import annotations

import json

import pytest
import torch

from models import default_registry
from tests.scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("generation_quality")


def test_variants_follow_the_params_of_each_entry(bench):
    reg = default_registry()
    assert bench.variants(reg.get("darkroom-ddpm-digits"), 8) == [
        {"micro_batch": 8, "sampler": "ddpm"},
        {"micro_batch": 8, "sampler": "ddim"},
    ]
    assert bench.variants(reg.get("darkroom-ddpm-digits"), 8, steps=3)[0] == {
        "micro_batch": 8,
        "steps": 3,
        "sampler": "ddpm",
    }
    for entry in reg.entries():
        if entry.task == "generation" and entry.weights is not None:  # what the benchmark runs
            for params in bench.variants(entry, 8, steps=3):
                entry.validate_params(params)  # never a param the entry does not take


def test_scores_of_real_digits_and_of_noise(bench):
    """Held-back digits score as real digits do; noise fails every target; training digits are copies."""
    from models import digits_classifier
    from models.training import digits

    torch.set_num_threads(1)
    train, held = digits.load(32)
    classifier = digits_classifier.build()
    held_nn = bench.nearest_l2(held.coloured(), train.coloured())
    real = bench.score(held.coloured(), None, classifier, train, held_nn)
    assert (
        real["confident"] > 0.9
        and real["min_class_share"] > 0.05
        and real["colour_agrees"] > 0.95
        and real["copies"] == 0
    )
    noise = bench.score(
        torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0)), None, classifier, train, held_nn
    )
    assert noise["confident"] < 0.1 and not noise["targets_met"]
    copies = bench.score(train.coloured()[:40], train.labels[:40].tolist(), classifier, train, held_nn)
    assert copies["copies"] == 1.0 and copies["label_agrees"] > 0.9


def test_tiny_run_writes_json_doc_and_grids(bench, tmp_path):
    doc = tmp_path / "generation.md"
    doc.write_text(f"before\n{bench.BEGIN}\nold table\n{bench.END}\nafter\n")
    result = bench.main(
        [
            "--samples",
            "4",
            "--batch",
            "2",
            "--steps",
            "2",
            "--models",
            "darkroom-ddpm-digits",
            "--json",
            str(tmp_path / "r.json"),
            "--doc",
            str(doc),
            "--grids",
            str(tmp_path / "grids"),
        ]
    )
    assert [(r["sampler"], r["steps"]) for r in result["rows"]] == [("ddpm", 2), ("ddim", 2)]
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["samples"] == 4
    text = doc.read_text()
    assert (
        text.startswith("before\n")
        and text.endswith("after\n")
        and "old table" not in text
        and "| darkroom-ddpm-digits | ddim | 2 |" in text
    )
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == [
        "samples-darkroom-ddpm-digits-ddim.png",
        "samples-darkroom-ddpm-digits-ddpm.png",
    ]
