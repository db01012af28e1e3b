"""`python -m fmnist bench {train,infer,photos,explain,serve}`: benchmark commands that print measured tables.

Each benchmark lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
this file only wires them into the CLI. Importing them is cheap: each imports TensorFlow and
OpenVINO only when it runs.
"""

from __future__ import annotations

from fmnist import bench_explain, bench_infer, bench_photos, bench_serve, bench_train

BENCHMARKS = {
    "train": (bench_train, "train presets with the test set held out; throughput vs plain fit"),
    "infer": (bench_infer, "latency, throughput, accuracy and agreement of every backend"),
    "photos": (bench_photos, "accuracy on a folder of real photos: naive resizes vs the pipeline"),
    "explain": (bench_explain, "calibration, unfamiliar-input AUROCs and flag rates, neighbours, occlusion time"),
    "serve": (bench_serve, "a KServe v2 model server vs the in-process backend: agreement, concurrent latency"),
}


def add_cli(subparsers, cli_error) -> None:
    """`python -m fmnist bench BENCHMARK ...`: one subcommand per benchmark module."""
    bench = subparsers.add_parser("bench", help="benchmarks that print measured figures")
    sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
