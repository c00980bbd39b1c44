"""GPU check: the CUDA paths no CPU test reaches, and pruned-model latency on the GPU.

On one CUDA device, in a few minutes (each step bounded; the whole run stops starting new
checks after ``--budget`` seconds, 420 by default):

1. a few training steps through polarprune's own engine (``workflows.train.build_trainer`` +
   ``Trainer.fit`` on the ``fake`` data set) with AMP fp16 and its ``GradScaler``;
2. the same with ``channels_last``;
3. NCCL init of a 1-process group (``torch.distributed``, rank 0 of 1) and the same steps under
   DDP with ``sync_bn`` (torch's ``nn.SyncBatchNorm``);
4. ResNet-50 (224 px, synthetic gammas as in ``bench_pruned_latency``) pruned to about 50% of
   its MACs (``round_to=8``, the tensor-core multiple) against unpruned: eager fp16
   (channels_last) latency at batch 1 and 64, interleaved rounds; and onnxruntime's CUDA and
   TensorRT providers where installed (model exported and verified on the CPU first).

Writes ``bench/results/gpu_check.json`` (+ ``.md``) with machine, versions, command, seed and
git revision. Without a CUDA device it prints ``skipped: no CUDA device`` and exits 0
(writing nothing).

    .venv/bin/python bench/gpu_check.py [--steps 8] [--rounds 10] [--budget 420]
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_provenance_options, data_sizes, provenance, provenance_markdown, write_results  # noqa: E402

LIBRARIES = ("polarprune", "torch", "torchvision", "numpy", "torch-pruning", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt")
SKIP_LINE = "skipped: no CUDA device"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_steps(out: Path, steps: int, device: str = "cuda", **train: Any) -> dict[str, Any]:
    """``steps`` optimisation steps of ResNet-20 on fake CIFAR-size data through the engine."""
    from polarprune.config import TrainConfig
    from polarprune.workflows.train import build_trainer

    cfg = TrainConfig.model_validate({
        "device": device, "out": str(out), "seed": 0,
        "model": {"name": "resnet20"},
        "data": {"name": "fake", "batch_size": 32, "train_subset": 32 * steps, "eval_subset": 64},
        "train": {"epochs": 1, "lr": 0.05, "progress": False, "max_steps_per_epoch": steps, **train},
        "sparsity": {"regularizer": "polarization", "lbd": 1e-4},
    })
    trainer = build_trainer(cfg, resume=False)
    info: dict[str, Any] = {
        "grad_scaler_enabled": bool(trainer.scaler.is_enabled()),
        "sync_batchnorm_layers": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in trainer.train_model.modules()),
        "ddp": isinstance(trainer.train_model, torch.nn.parallel.DistributedDataParallel),
        "channels_last_weights": trainer.model.conv1.weight.is_contiguous(memory_format=torch.channels_last),
    }
    result = trainer.fit()
    info["history"] = [{k: v for k, v in row.items() if isinstance(v, (int, float))} for row in result.history]
    info["final_top1"] = result.final_top1
    info["loss_finite"] = bool(result.history) and all(math.isfinite(float(r["train_loss"])) for r in result.history)
    if not info["loss_finite"]:
        raise RuntimeError(f"training loss not finite: {[r.get('train_loss') for r in result.history]}")
    return info


def require(info: dict[str, Any], **expected: Any) -> dict[str, Any]:
    """``info`` unchanged when it has the ``expected`` values (``"some"``: > 0), else an error:
    a check that ran the wrong path fails."""
    wrong = {k: info.get(k) for k, v in expected.items() if not (info.get(k, 0) > 0 if v == "some" else info.get(k) == v)}
    if wrong:
        raise RuntimeError(f"expected {expected}, got {wrong}")
    return info


def nccl_sync_bn(out: Path, steps: int) -> dict[str, Any]:
    """NCCL init of a 1-process group, then DDP + SyncBatchNorm training steps."""
    import torch.distributed as tdist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    start = time.perf_counter()
    tdist.init_process_group("nccl", rank=0, world_size=1)
    try:
        probe = torch.ones(4, device="cuda")
        tdist.all_reduce(probe)
        info = {"nccl_init_seconds": time.perf_counter() - start, "all_reduce_ok": bool((probe == 1).all()),
                "nccl_version": ".".join(map(str, torch.cuda.nccl.version()))}
        info.update(require(train_steps(out, steps, sync_bn=True), ddp=True, sync_batchnorm_layers="some"))
    finally:
        tdist.destroy_process_group()
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(key, None)
    return info


def gpu_latency(rounds: int, seed: int, budget_left: Callable[[], float]) -> dict[str, Any]:
    """Pruned vs unpruned ResNet-50 in eager fp16 (channels_last) and onnxruntime GPU providers."""
    from bench_pruned_latency import randomise

    from polarprune.deploy.export import export_model, load_artifact
    from polarprune.deploy.latency import interleaved, paired_ratios
    from polarprune.flops import count_model
    from polarprune.models import create
    from polarprune.pruning import prune_model

    torch.manual_seed(seed)
    base = create("resnet50").eval()
    example = torch.randn(1, 3, 224, 224)
    randomise(base, example, seed)
    pruned, _ = prune_model(base, example, "flops-target", target_macs_reduction=0.5, round_to=8)
    models = {"unpruned": base, "pruned": pruned.eval()}
    macs = {k: count_model(v, (3, 224, 224)).macs for k, v in models.items()}
    out: dict[str, Any] = {"macs": macs, "macs_cut": 1 - macs["pruned"] / macs["unpruned"], "eager_fp16": {}, "onnxruntime": {}}
    half = {k: v.to("cuda", dtype=torch.float16, memory_format=torch.channels_last) for k, v in models.items()}

    def synced(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            fn()
            torch.cuda.synchronize()
        return run

    for batch in (1, 64):
        x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            seconds = interleaved({k: synced(lambda m=m: m(x)) for k, m in half.items()}, rounds=rounds, warmup=3)
        ratio = statistics.median(paired_ratios(seconds["pruned"], seconds["unpruned"]))
        out["eager_fp16"][str(batch)] = {"median_ms": {k: statistics.median(v) * 1000 for k, v in seconds.items()},
                                         "latency_cut": 1 - ratio, "cut_over_macs_cut": (1 - ratio) / out["macs_cut"]}
    try:
        import onnxruntime as ort

        providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in ort.get_available_providers()]
    except ImportError:
        providers = []
    out["onnxruntime"]["providers_available"] = providers
    for provider in providers:
        if budget_left() < 60:
            out["onnxruntime"][provider] = {"skipped": "time budget"}
            continue
        try:
            with tempfile.TemporaryDirectory() as folder:
                runners = {}
                for k, m in models.items():
                    path = Path(folder) / f"{k}.onnx"
                    export_model(m, path, "onnx", input_size=224, batch=64)
                    runners[k] = load_artifact(path, "onnx", providers=[provider, "CPUExecutionProvider"])
                x = torch.randn(64, 3, 224, 224)
                seconds = interleaved({k: (lambda r=r: r(x)) for k, r in runners.items()}, rounds=max(3, rounds // 2), warmup=2)
            ratio = statistics.median(paired_ratios(seconds["pruned"], seconds["unpruned"]))
            out["onnxruntime"][provider] = {"batch": 64, "median_ms": {k: statistics.median(v) * 1000 for k, v in seconds.items()},
                                            "latency_cut": 1 - ratio, "cut_over_macs_cut": (1 - ratio) / out["macs_cut"],
                                            "note": "host input, so host-device copies are included"}
        except Exception as exc:  # noqa: BLE001 - an unusable provider is a finding, not a crash
            out["onnxruntime"][provider] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["# GPU check", "", provenance_markdown(result["provenance"]), ""]
    lines.append("| check | ok | seconds | details |")
    lines.append("|---|---|---:|---|")
    for name, check in result["checks"].items():
        details = check.get("error") or ", ".join(f"{k}={v}" for k, v in check.get("result", {}).items() if not isinstance(v, (dict, list)))
        lines.append(f"| {name} | {'yes' if check['ok'] else 'NO'} | {check.get('seconds', 0):.1f} | {details} |")
    latency = result["checks"].get("resnet50_latency", {}).get("result")
    if latency:
        lines += ["", f"ResNet-50 pruned to a MACs cut of {latency['macs_cut']:.1%} (round_to 8):", "",
                  "| runtime | batch | unpruned ms | pruned ms | latency cut | cut / MACs cut |", "|---|---:|---:|---:|---:|---:|"]
        for batch, r in latency["eager_fp16"].items():
            lines.append(f"| eager fp16 channels_last | {batch} | {r['median_ms']['unpruned']:.2f} | {r['median_ms']['pruned']:.2f} | "
                         f"{r['latency_cut']:.1%} | {r['cut_over_macs_cut']:.2f} |")
        for provider, r in latency["onnxruntime"].items():
            if isinstance(r, dict) and "median_ms" in r:
                lines.append(f"| onnxruntime {provider} | {r['batch']} | {r['median_ms']['unpruned']:.2f} | {r['median_ms']['pruned']:.2f} | "
                             f"{r['latency_cut']:.1%} | {r['cut_over_macs_cut']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps per engine check")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which no new check starts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    add_provenance_options(parser)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(SKIP_LINE)
        return 0
    start = time.perf_counter()

    def budget_left() -> float:
        return args.budget - (time.perf_counter() - start)

    result: dict[str, Any] = {"provenance": provenance(args.seed, LIBRARIES, data=data_sizes(0, 0, "random tensors and generated fake images (no dataset)"),
                                                     allow_dirty=args.allow_dirty), "device": torch.cuda.get_device_name(0), "checks": {}}
    with tempfile.TemporaryDirectory(prefix="polarprune-gpu-check-") as folder:
        checks: dict[str, Callable[[], dict[str, Any]]] = {
            "amp_fp16_grad_scaler": lambda: require(train_steps(Path(folder) / "amp", args.steps, amp=True, amp_dtype="float16"),
                                                    grad_scaler_enabled=True),
            "channels_last": lambda: require(train_steps(Path(folder) / "cl", args.steps, channels_last=True, amp=True),
                                             channels_last_weights=True),
            "nccl_sync_batchnorm": lambda: nccl_sync_bn(Path(folder) / "ddp", args.steps),
            "resnet50_latency": lambda: gpu_latency(args.rounds, args.seed, budget_left),
        }
        for name, check in checks.items():
            if budget_left() <= 0:
                result["checks"][name] = {"ok": False, "error": "not started: time budget spent"}
                continue
            began = time.perf_counter()
            print(f"{name} ...", file=sys.stderr, flush=True)
            try:
                result["checks"][name] = {"ok": True, "result": check()}
            except Exception as exc:  # noqa: BLE001 - record and go on with the other checks
                result["checks"][name] = {"ok": False, "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}",
                                          "traceback": traceback.format_exc()}
            result["checks"][name]["seconds"] = time.perf_counter() - began
    result["wall_seconds"] = time.perf_counter() - start
    text = markdown(result)
    print(text)
    if not args.no_write:
        print("wrote", *write_results("gpu_check", result, text), file=sys.stderr)
    return 0 if all(c["ok"] for c in result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
