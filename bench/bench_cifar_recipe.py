"""Run the reduced ResNet-20 polarization recipe end to end on the shared CIFAR-10 JPEG archive.

`polarprune run bench/recipes/cifar10jpg-resnet20-quick.yaml` in a scratch folder, then the run's
summary (per-stage top-1, MACs, params, latency and the reductions) is copied with provenance to
bench/results/cifar_recipe_resnet20.{json,md}. Usage: python bench/bench_cifar_recipe.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_provenance_options, checked_revision, configured_sizes, provenance, provenance_markdown, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "bench" / "recipes" / "cifar10jpg-resnet20-quick.yaml"


def recipe_data() -> dict:
    """The recipe's ``data:`` section, its archive path resolved from the repository root (where the run starts)."""
    import yaml

    data = dict(yaml.safe_load(RECIPE.read_text())["data"])
    data["root"] = str((REPO / data["root"]).resolve())
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/polarprune-bench/cifar10jpg-resnet20-quick", help="run folder (outside the repo)")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first (else it resumes/reports)")
    add_provenance_options(parser)
    args = parser.parse_args()
    checked_revision(args.allow_dirty)  # before the run, not after it
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    command = [sys.executable, "-m", "polarprune", "run", str(RECIPE), "--out", args.out]
    subprocess.run(command, cwd=REPO, check=True)
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    prov = provenance(0, data=configured_sizes(recipe_data(), 0), allow_dirty=args.allow_dirty)
    markdown = (Path(args.out) / "summary.md").read_text()
    results = REPO / "bench" / "results"
    for png in sorted(Path(args.out).glob("*.png")):  # keep the plots beside the committed summary
        name = f"cifar_recipe_resnet20_{png.name}"
        shutil.copyfile(png, results / name)
        markdown = markdown.replace(f"]({png.name})", f"]({name})")
    markdown += "\n" + provenance_markdown(prov) + f"\n\nCommand: `{' '.join(['polarprune', 'run', str(RECIPE.relative_to(REPO)), '--out', args.out])}`\n"
    write_results("cifar_recipe_resnet20", {"provenance": prov, "summary": summary}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
