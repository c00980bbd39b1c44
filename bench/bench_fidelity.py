"""Measured effects of the differences from the original code bases (docs/fidelity.md, issue 13).

Each part runs polarprune's default and the original's behaviour (as polarprune reproduces it)
on the same synthetic inputs and records the difference:

- ``votes``: random residual groups (2-6 BNs of 64 channels, each BN removing every channel
  with its own probability in [0.2, 0.8]): channels removed per group by the unanimous vote
  (polarprune's ``any``) and by MaskSparsity's relaxing vote;
- ``flops_weights``: ResNet-56's 54 regularized BNs weighted the original way and polarprune's
  way (``weight_min`` 0.5, ``weight_max`` 1.5): how many layer weights differ and by how much,
  and the polarization penalty (t 1.2) on random gammas in [0, 1] with each;
- ``percent``: channels removed by ``percent`` over ResNet-56's 2016 regularized channels with
  polarprune's ``round(N*p)`` and the original's "sorted index int(N*p) and below";
- ``raw_gamma``: ``fixed`` (0.01) and ``grad`` decisions scoring ``|gamma|`` (polarprune) and
  raw ``gamma`` (the original) on unclamped L1-like gammas (normal, mean 0.3, sd 0.3), and on
  clamped ones;
- ``bn_init``: the digits demo's polarization run (small CNN with a BN1d head, 40 epochs,
  deterministic CPU) with gamma 0.5 on every BN (polarprune's ``bn_init``) and on the
  BatchNorm2d layers only (the original; the BN1d keeps 1.0), each pruned with ``grad``.

    .venv/bin/python bench/bench_fidelity.py
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_provenance_options, configured_sizes, provenance, provenance_markdown, write_results  # noqa: E402

from polarprune.config import TrainConfig  # noqa: E402
from polarprune.data import build_data, probe_batch  # noqa: E402
from polarprune.models import create  # noqa: E402
from polarprune.pruning import prune_model  # noqa: E402
from polarprune.pruning.strategies import grad_threshold  # noqa: E402
from polarprune.pruning.trial import TrialAnalysis  # noqa: E402
from polarprune.pruning.votes import masksparsity_keep  # noqa: E402
from polarprune.sparsity.flops_weighting import original_channel_macs  # noqa: E402
from polarprune.sparsity.regularizers import flops_weights, polarization_penalty  # noqa: E402
from polarprune.sparsity.selection import regularized_bn_names  # noqa: E402
from polarprune.training.engine import evaluate  # noqa: E402
from polarprune.workflows.train import run_training  # noqa: E402


def votes(seed: int, groups: int = 2000, channels: int = 64) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    unanimous, relaxed, least = [], [], []
    for _ in range(groups):
        size = int(torch.randint(2, 7, (1,), generator=g))
        probs = 0.2 + 0.6 * torch.rand(size, 1, generator=g)
        keep = torch.rand(size, channels, generator=g) >= probs
        unanimous.append(int((~keep.any(dim=0)).sum()))
        relaxed.append(int((~masksparsity_keep(list(keep))).sum()))
        least.append(int((~keep).sum(dim=1).min()))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"groups": groups, "channels": channels, "removed_per_group_any": mean(unanimous),
            "removed_per_group_masksparsity": mean(relaxed), "smallest_per_bn_count_mean": mean(least),
            "groups_where_masksparsity_reaches_least": sum(r >= m for r, m in zip(relaxed, least))}


def weights(seed: int) -> dict[str, Any]:
    model = create("resnet56", num_classes=10)
    example = torch.zeros(1, 3, 32, 32)
    names = regularized_bn_names(model, example, method="polarization")
    trial = TrialAnalysis(model, example, bn_names=names)
    original = flops_weights(original_channel_macs(model, trial.analysis.layer_shapes(), names), 0.5, 1.5)
    residual_macs = trial.channel_macs()
    residual = flops_weights({n: residual_macs[n] for n in names}, 0.5, 1.5)
    diffs = {n: residual[n] - original[n] for n in names}
    g = torch.Generator().manual_seed(seed)
    gammas = [torch.rand(model.get_submodule(n).num_features, generator=g) for n in names]
    pen = {k: float(polarization_penalty(gammas, 1.0, 1.2, weights=[w[n] for n in names]))
           for k, w in (("original", original), ("residual", residual))}
    worst = max(diffs, key=lambda n: abs(diffs[n]))
    return {"layers": len(names), "differ": sum(abs(d) > 1e-9 for d in diffs.values()),
            "max_abs_difference": abs(diffs[worst]), "max_difference_layer": worst,
            "penalty_original": pen["original"], "penalty_residual": pen["residual"],
            "penalty_relative_difference": pen["residual"] / pen["original"] - 1.0,
            "original": original, "residual": residual}


def percent(total: int = 2016) -> dict[str, Any]:
    rows = []
    for k in range(1, 20):
        p = k / 20
        ours = min(total, int(math.floor(p * total + 0.5)))
        theirs = min(total, int(total * p) + 1)
        rows.append({"percent": p, "polarprune": ours, "original": theirs, "difference": theirs - ours})
    return {"channels": total, "rows": rows, "max_difference": max(abs(r["difference"]) for r in rows)}


def raw_gamma(seed: int, layers: int = 54, width: int = 64) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    unclamped = [0.3 + 0.3 * torch.randn(width, generator=g) for _ in range(layers)]
    clamped = [x.clamp(0, 1) for x in unclamped]
    out: dict[str, Any] = {"layers": layers, "width": width}
    for label, sets in (("unclamped", unclamped), ("clamped", clamped)):
        fixed = sum(int(((x > 0.01) != (x.abs() > 0.01)).sum()) for x in sets)
        grad = 0
        for x in sets:
            raw_cut, _ = grad_threshold(x, warn=False)
            abs_cut, _ = grad_threshold(x.abs(), warn=False)
            grad += int(((x > raw_cut) != (x.abs() > abs_cut)).sum())
        out[label] = {"negative_gammas": sum(int((x < 0).sum()) for x in sets),
                      "fixed_decisions_differing": fixed, "grad_decisions_differing": grad, "decisions": layers * width}
    return out


def bn_init(seed: int, epochs: int = 40) -> dict[str, Any]:
    out: dict[str, Any] = {"epochs": epochs}
    for scope in ("every_bn", "batchnorm2d_only"):
        model = create("small_cnn", 10, in_channels=1, bn_init=0.5)
        if scope == "batchnorm2d_only":
            for bn in model.modules():
                if isinstance(bn, torch.nn.BatchNorm1d):
                    torch.nn.init.constant_(bn.weight, 1.0)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(seed=seed, deterministic=True, device="cpu", out=tmp, model={"name": "small_cnn"},
                              data={"name": "digits", "batch_size": 64},
                              train={"epochs": epochs, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "progress": False,
                                     "schedule": {"type": "multistep", "milestones": [0.5, 0.75], "gammas": 0.1}},
                              sparsity={"regularizer": "polarization", "lbd": 2e-3, "t": 1.2, "clamp": 1.0, "monitor": False})
            trained = run_training(cfg, model=model, resume=False)
        data = build_data(cfg.data, seed=seed)
        pruned, report = prune_model(trained.model.cpu().eval(), probe_batch(data, 8), "grad")
        out[scope] = {"top1_sparsity": trained.final_top1, "macs_ratio_grad": report.macs_after / report.macs_before,
                      "top1_pruned": evaluate(pruned, data.eval_loader, torch.device("cpu"))["top1"]}
    return out


def markdown(result: dict[str, Any]) -> str:
    v, w, p, r, b = result["votes"], result["flops_weights"], result["percent"], result["raw_gamma"], result["bn_init"]
    return "\n".join([
        "# Fidelity to the original code bases: measured effects", "", provenance_markdown(result["provenance"]), "",
        f"- votes ({v['groups']} random groups of 2-6 BNs x {v['channels']} channels): removed per group "
        f"{v['removed_per_group_any']:.1f} (polarprune `any`), {v['removed_per_group_masksparsity']:.1f} (MaskSparsity's relaxing vote); "
        f"the smallest per-BN count averages {v['smallest_per_bn_count_mean']:.1f}, reached in {v['groups_where_masksparsity_reaches_least']} groups.",
        f"- FLOPs weights (ResNet-56, [0.5, 1.5]): {w['differ']} of {w['layers']} layer weights differ, by up to "
        f"{w['max_abs_difference']:.3f} ({w['max_difference_layer']}); polarization penalty on random gammas "
        f"{w['penalty_original']:.2f} (original) vs {w['penalty_residual']:.2f} (residual): {w['penalty_relative_difference']:+.1%}.",
        f"- percent over {p['channels']} channels, p = 0.05 .. 0.95: the counts differ by at most {p['max_difference']} channel.",
        f"- raw vs |gamma| ({r['layers']} layers x {r['width']}): unclamped (normal 0.3 +- 0.3, "
        f"{r['unclamped']['negative_gammas']} negative): fixed {r['unclamped']['fixed_decisions_differing']}, grad "
        f"{r['unclamped']['grad_decisions_differing']} of {r['unclamped']['decisions']} decisions differ; clamped: fixed "
        f"{r['clamped']['fixed_decisions_differing']}, grad {r['clamped']['grad_decisions_differing']}.",
        f"- BN init (digits, small CNN, {b['epochs']} polarization epochs, then grad): every BN at 0.5: top-1 "
        f"{b['every_bn']['top1_sparsity']:.2f}%, MACs ratio {b['every_bn']['macs_ratio_grad']:.4f}, pruned top-1 {b['every_bn']['top1_pruned']:.2f}%; "
        f"BatchNorm2d only: {b['batchnorm2d_only']['top1_sparsity']:.2f}%, {b['batchnorm2d_only']['macs_ratio_grad']:.4f}, "
        f"{b['batchnorm2d_only']['top1_pruned']:.2f}%.", ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    add_provenance_options(parser)
    args = parser.parse_args()
    result = {"provenance": provenance(args.seed, data=configured_sizes({"name": "digits", "batch_size": 64}, args.seed),
                                        allow_dirty=args.allow_dirty), "votes": votes(args.seed), "flops_weights": weights(args.seed),
              "percent": percent(), "raw_gamma": raw_gamma(args.seed), "bn_init": bn_init(args.seed)}
    text = markdown(result)
    print(text)
    if not args.no_write:
        print("wrote", *write_results("fidelity", result, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
