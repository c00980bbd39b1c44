"""A tiny YOLO-format data set written by the tests (tests/integrations/test_ultralytics.py,
tests/models/test_ultralytics_models.py): coloured boxes on plain backgrounds."""

from __future__ import annotations

from pathlib import Path

import torch

COLOURS = ((220, 40, 40), (40, 200, 60))


def write_yolo_set(root: Path, n_train: int = 8, n_val: int = 4, size: int = 64, seed: int = 0, polygons: bool = False) -> Path:
    """A tiny YOLO data set: each image holds one or two filled boxes of class 0 (red) or 1 (green); labelled as
    boxes, or (``polygons``) as the four-corner polygons a segmentation set has."""
    from PIL import Image, ImageDraw

    gen = torch.Generator().manual_seed(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = Image.new("RGB", (size, size), tuple(int(v) for v in torch.randint(0, 80, (3,), generator=gen)))
            draw, lines = ImageDraw.Draw(image), []
            for _ in range(1 + i % 2):
                cls = int(torch.randint(0, 2, (1,), generator=gen))
                w, h = (int(v) for v in torch.randint(size // 5, size // 2, (2,), generator=gen))
                x0, y0 = (int(v) for v in torch.randint(0, size - max(w, h), (2,), generator=gen))
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=COLOURS[cls])
                corners = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
                shape = [v / size for c in corners for v in c] if polygons else [(x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size]
                lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in shape))
            image.save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: green\n")
    return data
