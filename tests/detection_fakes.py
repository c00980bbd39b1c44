"""A tiny ImageFolder tree for the detection-set tests (tests/data/test_detection_synth.py,
tests/integrations/test_detector_example.py): no shared archive needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["ant", "bee", "cat"]


def fake_tree(root: Path, per_class: int = 3) -> Path:
    """train/ and test/ with ``per_class`` random 32x32 PNGs per class of ``CLASSES`` (distinct pixels)."""
    rng = np.random.default_rng(7)
    for split in ("train", "test"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / name / f"{i:04d}.png")
    return root
