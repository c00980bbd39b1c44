"""docs/examples/detector_loop.py (shown in docs/detection.md): a torchvision SSDlite sparsity-trained with
``build_hooks`` in a plain loop on a tiny generated set, then pruned, fine-tuned and scored by COCO mAP."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from polarprune.data.detection_synth import SynthSpec, make_detection_set

from detection_fakes import fake_tree

pytest.importorskip("pycocotools")

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLE = DOCS / "examples" / "detector_loop.py"
MARK = "# docs/examples/detector_loop.py"


def load_example():
    spec = importlib.util.spec_from_file_location("detector_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_doc_shows_the_example_as_it_is():
    """Every python block of docs/detection.md marked as the example's is made of the example's lines."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", (DOCS / "detection.md").read_text(), re.S) if b.startswith(MARK)]
    assert len(blocks) >= 2
    lines = {line.rstrip() for line in EXAMPLE.read_text().splitlines()}
    for block in blocks:
        for line in block.splitlines()[1:]:
            assert line.rstrip() in lines or not line.strip() or line.strip() == "...", line


@pytest.mark.timeout(180)  # about 20 s on 2 busy cores
def test_the_plain_loop_example_trains_prunes_and_scores_a_detector(tmp_path: Path):
    tree = fake_tree(tmp_path / "tree")
    make_detection_set(tree, tmp_path / "det", SynthSpec(8, 4, 64, seed=1, min_object=12, max_object=28))
    example = load_example()
    result = example.run(tmp_path / "det", steps=3, finetune_steps=1, image_size=64, batch_size=4,
                         sparsity={"regularizer": "polarization", "lbd": 1e-3, "t": 1.2},
                         strategy="percent", prune_options={"percent": 0.25})
    assert 0.0 < result["monitor"]["trial_macs_ratio_grad"] <= 1.0 and "gamma_mean" in result["monitor"]
    assert result["params_pruned"] < result["params"] and 0.0 < result["macs_ratio"] < 1.0
    for key in ("map_sparse", "map_pruned", "map_finetuned"):
        assert 0.0 <= result[key]["map50_95"] <= result[key]["map50"] <= 1.0
