"""`python -m fmnist bench infer [--run RUN] [--json] [--markdown]`: Keras vs OpenVINO on one run,
measured here (fmnist.measure does the measuring; this module is the command and its tables).
"""

from __future__ import annotations

import json
import sys

from fmnist.console import CLIError
from fmnist.measure import measure_backends

def format_report(result: dict) -> str:
    """The measured tables as text (the same table docs/openvino.md shows)."""
    m = result["machine"]
    lines = [f"run {result['run']}  ({result['images']:,} test images)",
             f"CPU: {m.get('cpu') or '?'}, {m.get('logical_cores')} logical cores; OpenVINO {m.get('openvino')}, "
             f"TensorFlow {m.get('tensorflow')}, Keras {m.get('keras')}", "",
             f"{'Single image':<18} {'p50 ms':>9} {'p95 ms':>9} {'calls':>6}"]
    for row in result["latency"]:
        lines.append(f"{row['label']:<18} {row['p50_ms']:>9.3f} {row['p95_ms']:>9.3f} {row['calls']:>6}")
    lines += ["", f"{'Batch':<18} {'images/s':>10} {'vs Keras':>9} {'accuracy':>9} {'agreement':>10} {'max |dp|':>9}"]
    for row in result["batch"]:
        lines.append(f"{row['label']:<18} {row['images_per_s']:>10,.0f} {row['speedup_vs_keras']:>8.2f}x "
                     f"{row['accuracy'] * 100:>8.2f}% {row['top1_agreement'] * 100:>9.2f}% {row['max_prob_diff']:>9.1e}")
    r = result["ratios"]
    if r:
        lines.append("")
        lines.append(f"OpenVINO FP32 single image: {r['fp32_latency_vs_keras_call']:.1f}x faster than Keras model(x), "
                     f"{r['fp32_latency_vs_keras_predict']:.0f}x faster than Keras predict")
        lines.append(f"OpenVINO FP32 batch: {r['fp32_throughput_vs_keras_predict']:.2f}x Keras predict")
        if "int8_throughput_vs_fp32" in r:
            lines.append(f"OpenVINO INT8 batch: {r['int8_throughput_vs_fp32']:.2f}x FP32, accuracy "
                         f"{r['int8_accuracy_minus_fp32_points']:+.2f} points vs FP32")
    for name, reason in result["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    """The measured tables as Markdown (what docs/openvino.md and the README show)."""
    m = result["machine"]
    lat = {row["method"]: row for row in result["latency"]}
    call = lat.get("keras-call", {}).get("p50_ms")
    lines = [f"Run `{result['run']}`, {result['images']:,} test images. CPU: {m.get('cpu') or '?'}, "
             f"{m.get('logical_cores')} logical cores; OpenVINO {m.get('openvino')}, TensorFlow {m.get('tensorflow')}, "
             f"Keras {m.get('keras')}.", "",
             "| single image | p50 ms | p95 ms | p50 vs Keras `model(x)` |", "|---|---:|---:|---:|"]
    for row in result["latency"]:
        ratio = f"{call / row['p50_ms']:.1f}x" if call else ""
        lines.append(f"| {row['label']} | {row['p50_ms']:.3f} | {row['p95_ms']:.3f} | {ratio} |")
    lines += ["", f"| batch ({result['images']:,} images) | images/s | vs Keras `predict` | test accuracy | "
                  "top-1 agreement with Keras | largest probability difference |",
              "|---|---:|---:|---:|---:|---:|"]
    for row in result["batch"]:
        lines.append(f"| {row['label']} | {row['images_per_s']:,.0f} | {row['speedup_vs_keras']:.2f}x | "
                     f"{row['accuracy'] * 100:.2f}% | {row['top1_agreement'] * 100:.2f}% | {row['max_prob_diff']:.1e} |")
    r = result["ratios"]
    if "int8_throughput_vs_fp32" in r:
        lines += ["", f"INT8 throughput is {r['int8_throughput_vs_fp32']:.2f}x FP32 for "
                      f"{r['int8_accuracy_minus_fp32_points']:+.2f} points of test accuracy."]
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--run", help="run name or path (default: the shipped model, else the newest run)")
    parser.add_argument("--runs-dir")
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: $FMNIST_DATA_DIR, then the Keras cache)")
    parser.add_argument("--repeats", type=int, default=200,
                        help="single-image calls per method (Keras predict: at most 30)")
    parser.add_argument("--batch-repeats", type=int, default=5, help="timed runs over the test set (best kept)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the optional OpenVINO BF16 row")
    parser.add_argument("--no-export", action="store_true",
                        help="don't export a run that has no OpenVINO IR yet (its OpenVINO rows are skipped)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")


def run(args) -> int:
    from fmnist import data as fdata
    from fmnist.runs import RunError, resolve_checked_run

    if args.repeats < 1 or args.batch_repeats < 1:
        raise CLIError("--repeats and --batch-repeats must be at least 1")
    try:
        run_dir = resolve_checked_run(args.run, args.runs_dir)
    except RunError as exc:
        raise CLIError(str(exc))
    try:
        dataset = fdata.load_fashion_mnist(args.data_dir, download=False)
    except fdata.DataError as exc:
        raise CLIError(str(exc))

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction * 100:3.0f}%] {message}...", file=sys.stderr, flush=True)

    if not args.no_export:
        from fmnist import export as fexport

        if not fexport.is_exported(run_dir):
            progress(0.0, f"{run_dir} has no up-to-date OpenVINO export; exporting it first")
            try:
                fexport.export_run(run_dir, calibration_images=None, data_dir=args.data_dir,
                                   progress=lambda message: progress(0.0, message))
            except (fexport.ExportError, RunError) as exc:
                raise CLIError(f"export failed: {str(exc).splitlines()[0] if str(exc) else exc}")
    result = measure_backends(run_dir, dataset.x_test, dataset.y_test, progress=progress, repeats=args.repeats,
                              batch_repeats=args.batch_repeats, include_bf16=not args.no_bf16)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.markdown:
        print(format_markdown(result))
    else:
        print(format_report(result))
    return 0
