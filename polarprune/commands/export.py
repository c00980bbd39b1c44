"""``polarprune export MODEL_FILE --format F --out PATH``: export a model and verify the artifact."""

from __future__ import annotations

import argparse
import json

from .common import add_model_name_arguments, check_at_least, check_forward, command_parser

EXPORT_FORMATS = ("onnx", "torchscript", "exported-program")  # a copy so --help stays torch-free (deploy.EXPORT_FORMATS)
DESCRIPTION = """Export a polarprune model file (or a model name) to ONNX, TorchScript or a torch.export program, run
the artifact (onnxruntime for ONNX, torch for the others) on a probe batch and compare it with PyTorch: the max
abs difference is reported, and above the tolerance nothing is written and the command fails. docs/deploy.md
describes the formats."""


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "export", "export a model to ONNX / TorchScript / torch.export and verify it", DESCRIPTION,
                       run)
    p.add_argument("model", metavar="MODEL_FILE", help="a model file written by polarprune (or a model name)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="artifact format (default onnx)")
    p.add_argument("--out", required=True, metavar="PATH", help="the artifact to write (exported-program: *.pt2)")
    p.add_argument("--batch", default="dynamic", metavar="dynamic|N", help="a dynamic batch dimension (default) or a fixed batch size")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: torch's exporter default)")
    p.add_argument("--tolerance", type=float, default=1e-4, metavar="T", help="largest accepted max abs difference, relative to the output's scale "
                   "(its max |value|, at least 1; default 1e-4)")
    add_model_name_arguments(p)
    p.add_argument("--json", action="store_true", help="print the export report as one JSON object")


def run(args: argparse.Namespace) -> int:
    from ..deploy.export import check_batch, export_model
    from ..models import input_shape_of
    from ..serialization import read_model

    check_at_least({"--input-size": (args.input_size, 1), "--num-classes": (args.num_classes, 1)})
    batch = check_batch(args.batch)
    model = read_model(args.model, num_classes=args.num_classes, trust_code=args.trust_code)
    check_forward(args.model, model, input_shape_of(model, args.input_size), "set --input-size")
    report = export_model(model, args.out, args.format, input_size=args.input_size, batch=batch, opset=args.opset,
                          tolerance=args.tolerance)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        opset = f", opset {report.opset}" if report.opset is not None else ""
        shape = "x".join(map(str, report.input_shape))
        print(f"wrote {report.path} ({report.format}{opset}, batch {report.batch}, input {shape}, {report.bytes:,} bytes)")
        print(f"verified: max abs difference {report.max_abs_diff:.3g} from PyTorch on a probe batch of "
              f"{report.probe_batch} (tolerance {report.tolerance:g}{_scaled(report.output_scale)})")
        if report.note:
            print(f"note: {report.note}")
    return 0


def _scaled(scale: float) -> str:
    return f" x output scale {scale:.3g}" if scale > 1 else ""
