"""`python -m fmnist bench {train,infer,photos}`: benchmark commands that print measured tables.

Each benchmark lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
this file only wires them into the CLI.
"""

from __future__ import annotations

import importlib

BENCHMARKS = {
    "train": ("fmnist.bench_train", "train presets with the test set held out; throughput vs plain fit"),
    "infer": ("fmnist.bench_infer", "latency, throughput, accuracy and agreement of every backend"),
    "photos": ("fmnist.bench_photos", "accuracy on a folder of real photos: naive resizes vs the pipeline"),
}


def add_cli(subparsers, cli_error) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks that print measured figures")
    sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
