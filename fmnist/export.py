"""OpenVINO export of a finished run: FP32 IR, NNCF INT8 IR, and an OpenVINO Model Server layout.

`python -m fmnist export RUN [--int8/--no-int8] [--force]` writes, inside the run:

    openvino/fp32/model.xml|bin         the inference graph, weights kept in float32
    openvino/int8/model.xml|bin         NNCF post-training quantization of the FP32 IR
    openvino/ovms/fmnist/1/model.xml|bin  the FP32 IR in OpenVINO Model Server's repository layout
    openvino/export.json                what was exported from what (sha256 of every IR file)

All files go through `fmnist.runs.add_files` in one call: the openvino/ folder is swapped in by
one rename with its own bundle-manifest.json (sha256 and size of every file). `fmnist.backends`
reads each IR file once and checks those bytes against both bundle-manifest.json and export.json
before OpenVINO sees them.

Choices, on purpose:
  * `compress_to_fp16=False` for the FP32 IR: FP16 weights would change the answers (about 1e-3 in
    probability) and the model is small (a few MB), so disk is not worth the difference.
  * The graph is the model's inference graph: the Keras model is called with training=False and
    contains no augmentation layers (augmentation lives in the tf.data pipeline), so dropout is a
    no-op and `ov.convert_model` sees only deterministic layers.
  * INT8 is calibrated on training images only (never the test set): a seeded sample of
    `CALIBRATION_SIZE` images, at least `MIN_CALIBRATION`.
  * Idempotent: when export.json matches the run's current model.keras (sha256), the OpenVINO
    version and the requested parts, nothing is rewritten.

Input `pixels`: float32 (N, 28, 28, 1) raw 0..255 (dynamic N). Output `probabilities`: (N, 10).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from fmnist import openvino_ir
from fmnist.openvino_ir import (EXPORT_FORMAT, EXPORT_JSON, INPUT_NAME, IR_FILES, OUTPUT_NAME, OV_DIR,
                                read_export_info)
from fmnist.runs import BUNDLE_MANIFEST, RunError, add_files, checked_run, file_entry, manifest_files, verify_bundle

MIN_CALIBRATION = 300
CALIBRATION_SIZE = 1000
CALIBRATION_SEED = 0
PARITY_IMAGES = 256  # training images run through Keras and the FP32 IR at export time
PARITY_TOLERANCE = 1e-4  # largest allowed probability difference between Keras and the FP32 IR


class ExportError(Exception):
    """The run cannot be exported (not a usable run, no calibration data, conversion failed)."""


def _source_sha(run_dir: Path) -> str:
    entry = manifest_files(run_dir).get("model.keras") or {}
    return str(entry.get("sha256", ""))


def _bundle_files(run_dir: Path) -> dict:
    """{path inside openvino/: {sha256, bytes}} from the bundle's own manifest ({} when absent)."""
    try:
        return manifest_files(run_dir / OV_DIR, BUNDLE_MANIFEST)
    except (OSError, ValueError):
        return {}


def is_exported(run_dir: str | Path, int8: bool = True) -> bool:
    """True when the run holds an up-to-date export (FP32, and INT8 when asked) that verifies.

    Checks the bundle manifest against the files (sha256) and export.json against the bundle
    manifest, so a tampered or truncated export is not "up to date" and gets rewritten.
    """
    import openvino as ov

    run_dir = Path(run_dir)
    info = read_export_info(run_dir)
    if not info:
        return False
    try:
        source = _source_sha(run_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if info.get("source_sha256") != source or info.get("openvino_version") != ov.get_version():
        return False
    listed = _bundle_files(run_dir)
    parts = ["fp32", "ovms"] + (["int8"] if int8 else [])
    files = info.get("files") or {}
    for part in parts:
        for rel in IR_FILES[part]:
            inner = rel.split("/", 1)[1]
            if rel not in files or listed.get(inner, {}).get("sha256") != files[rel].get("sha256"):
                return False
    return verify_bundle(run_dir / OV_DIR) == "ok"


def _calibration_images(calibration_images: np.ndarray | None, config: dict, data_dir=None) -> np.ndarray:
    """A seeded sample of training images (uint8 or float, (N, 28, 28)) for INT8 calibration."""
    from fmnist import data as fdata

    if calibration_images is not None and len(calibration_images) < MIN_CALIBRATION:
        calibration_images = None  # too few (a --limit run): fall back to the full training set
    if calibration_images is None:
        try:
            dataset = fdata.load_fashion_mnist(data_dir, download=False)
        except fdata.DataError as exc:
            raise ExportError(
                f"INT8 calibration needs at least {MIN_CALIBRATION} Fashion-MNIST training images and "
                f"none were given or found ({exc}). Set ${fdata.ENV_VAR}, or export FP32 only with "
                f"--no-int8") from exc
        try:  # the run's own training split when its config allows; the whole training set otherwise
            splits = fdata.make_splits(dataset, float(config.get("val_fraction", 0.1)),
                                       int(config.get("seed", 0)), None)
            calibration_images = splits.x_train
        except (ValueError, TypeError):
            calibration_images = dataset.x_train
    images = np.asarray(calibration_images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ExportError(f"calibration images must have shape (N, 28, 28), got {images.shape}")
    if len(images) < MIN_CALIBRATION:
        raise ExportError(f"INT8 calibration needs at least {MIN_CALIBRATION} training images, got {len(images)}")
    rng = np.random.default_rng(CALIBRATION_SEED)
    pick = np.sort(rng.choice(len(images), size=min(CALIBRATION_SIZE, len(images)), replace=False))
    return images[pick].astype(np.float32)[..., None]


def convert_keras_model(model):
    """ov.Model of a Keras model's inference graph: input `pixels` (-1, 28, 28, 1) f32, output `probabilities`."""
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that a positional input doesn't match its dict structure
        try:
            ov_model = ov.convert_model(model, input=[(INPUT_NAME, [-1, 28, 28, 1], ov.Type.f32)])
        except Exception as exc:
            raise ExportError(f"OpenVINO could not convert the model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}). Random augmentation "
                              "layers inside a model make conversion fail: export the inference graph only") from exc
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    ov_model.set_friendly_name("fmnist")
    return ov_model


def quantize_int8(ov_model, calibration: np.ndarray):
    """NNCF post-training INT8 quantization, one calibration image per sample (exact statistics)."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    dataset = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    # NNCF draws rich progress bars on stdout; keep stdout clean for --json and pipelines.
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(ov_model, dataset, subset_size=len(calibration),
                             preset=nncf.QuantizationPreset.PERFORMANCE)


def _save_ir(ov_model, folder: Path) -> tuple[bytes, bytes]:
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, folder / "model.xml", compress_to_fp16=False)
    return (folder / "model.xml").read_bytes(), (folder / "model.bin").read_bytes()


def _infer_all(core, ov_model, images: np.ndarray) -> np.ndarray:
    compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(images)[0], dtype=np.float32)


def export_run(run_dir: str | Path, calibration_images: np.ndarray | None = None, int8: bool = True,
               force: bool = False, progress: Callable[[str], None] | None = None, data_dir=None) -> dict:
    """Export a finished run to OpenVINO IR (FP32, INT8 unless int8=False, OVMS layout).

    calibration_images: uint8 training images (N, 28, 28) for INT8 calibration (never the test
    set); when None (or fewer than MIN_CALIBRATION), the training images are loaded with
    `fmnist.data.load_fashion_mnist(data_dir)` (the run's own training split); ExportError when
    that fails. progress(message) is called before each step.
    Returns export.json's content plus `exported` (False when the export was already up to date).
    Raises ExportError (or fmnist.runs.RunError for a broken run).
    """
    import openvino as ov

    from fmnist.keras_backend import load_model

    say = progress or (lambda message: None)
    run_dir = Path(run_dir)
    info = checked_run(run_dir)  # the run's manifest verifies model.keras and config.json
    if not force and is_exported(run_dir, int8=int8):
        existing = read_export_info(run_dir) or {}
        return {**existing, "exported": False}
    t0 = time.perf_counter()
    previous = read_export_info(run_dir) or {}
    say("loading the Keras model")
    try:
        model = load_model(run_dir)
    except RunError as exc:
        raise ExportError(str(exc)) from exc
    calibration = _calibration_images(calibration_images, info.config, data_dir) if int8 else None

    say("converting to OpenVINO (FP32)")
    ov_model = convert_keras_model(model)
    core = openvino_ir.core()
    # Parity check on training images: the IR must reproduce Keras before it is written.
    parity_x = (calibration[:PARITY_IMAGES] if calibration is not None else
                np.random.default_rng(CALIBRATION_SEED).integers(0, 256, (PARITY_IMAGES, 28, 28, 1))
                .astype(np.float32))
    keras_probs = np.asarray(model(parity_x, training=False), dtype=np.float32)
    fp32_probs = _infer_all(core, ov_model, parity_x)
    fp32_diff = float(np.abs(fp32_probs - keras_probs).max())
    if not fp32_diff <= PARITY_TOLERANCE:
        raise ExportError(f"the FP32 IR disagrees with Keras (largest probability difference {fp32_diff:.2e} > "
                          f"{PARITY_TOLERANCE:g}); not exported")

    record = {
        "format": EXPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "source_sha256": _source_sha(run_dir),
        "openvino_version": ov.get_version(),
        "input": {"name": INPUT_NAME, "shape": [-1, 28, 28, 1], "dtype": "f32", "range": "raw pixels 0..255"},
        "output": {"name": OUTPUT_NAME, "shape": [-1, 10], "dtype": "f32"},
        "fp32": {"compress_to_fp16": False, "parity_images": int(len(parity_x)),
                 "max_prob_diff_vs_keras": fp32_diff},
        "int8": None,
        "ovms": {"model_name": "fmnist", "version": 1, "source": "fp32"},
        "files": {},
    }
    contents: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="fmnist-ov-") as tmp:
        xml, bin_ = _save_ir(ov_model, Path(tmp) / "fp32")
        for part in ("fp32", "ovms"):
            contents[IR_FILES[part][0]], contents[IR_FILES[part][1]] = xml, bin_
        if int8:
            import nncf

            say(f"quantizing to INT8 with NNCF ({len(calibration)} training images)")
            try:
                q_model = quantize_int8(ov_model, calibration)
            except Exception as exc:
                raise ExportError(f"NNCF INT8 quantization failed: {type(exc).__name__}: {exc}") from exc
            int8_probs = _infer_all(core, q_model, parity_x)
            xml8, bin8 = _save_ir(q_model, Path(tmp) / "int8")
            contents[IR_FILES["int8"][0]], contents[IR_FILES["int8"][1]] = xml8, bin8
            record["int8"] = {
                "method": "nncf.quantize (post-training, preset performance)", "nncf_version": nncf.__version__,
                "calibration_images": int(len(calibration)), "calibration_source": "training set",
                "calibration_seed": CALIBRATION_SEED,
                "agreement_images": int(len(parity_x)),
                "top1_agreement_vs_keras": float(
                    np.mean(int8_probs.argmax(1) == keras_probs.argmax(1))),
            }
        elif (previous.get("int8") and previous.get("source_sha256") == record["source_sha256"]
              and verify_bundle(run_dir / OV_DIR) == "ok"):
            record["int8"] = previous["int8"]  # keep an existing, still matching INT8 export
            for rel in IR_FILES["int8"]:
                if rel in (previous.get("files") or {}):
                    record["files"][rel] = previous["files"][rel]
    for rel, data in contents.items():
        record["files"][rel] = file_entry(data)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    say("writing IR files into the run")
    add_files(run_dir, {**contents, EXPORT_JSON: json.dumps(record, indent=2).encode()})
    return {**record, "exported": True}


def add_cli(subparsers, cli_error) -> None:
    """`python -m fmnist export [RUN] [--int8/--no-int8] [--force] [--json]`."""
    p = subparsers.add_parser(
        "export", help="export a run to OpenVINO IR (FP32, INT8, OVMS layout)",
        description="Write RUN/openvino/{fp32,int8,ovms} (checked by sha256 before loading). Idempotent: "
                    "an up-to-date export is left as it is unless --force.")
    p.add_argument("run", nargs="?", help="run name or path (default: the shipped model, else the newest run)")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                   help="also write the NNCF INT8 model, calibrated on training images (default: on)")
    p.add_argument("--force", action="store_true", help="export again even when up to date")
    p.add_argument("--json", action="store_true", help="print export.json")
    p.add_argument("--data-dir", help="Fashion-MNIST folder for INT8 calibration (training images)")
    p.add_argument("--runs-dir")

    def run(args) -> int:
        from fmnist.runs import resolve_run

        try:
            run_dir = resolve_run(args.run, args.runs_dir)
        except RunError as exc:
            raise cli_error(str(exc))
        progress = (lambda message: print(f"{message}...", file=sys.stderr, flush=True))
        try:
            result = export_run(run_dir, int8=args.int8, force=args.force, progress=progress,
                                data_dir=args.data_dir)
        except (ExportError, RunError) as exc:
            raise cli_error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if args.json:
            print(json.dumps(result, indent=2))
            return 0
        if not result["exported"]:
            print(f"{run_dir}/{OV_DIR} is up to date (exported {result.get('created')}); --force to redo")
            return 0
        print(f"exported {run_dir}/{OV_DIR} in {result['seconds']:.1f}s (OpenVINO {result['openvino_version']})")
        print(f"  fp32: max probability difference vs Keras {result['fp32']['max_prob_diff_vs_keras']:.1e} "
              f"on {result['fp32']['parity_images']} training images")
        if result.get("int8"):
            print(f"  int8: calibrated on {result['int8']['calibration_images']} training images; top-1 agreement "
                  f"with Keras {result['int8']['top1_agreement_vs_keras'] * 100:.2f}% "
                  f"on {result['int8']['agreement_images']} of them")
        print(f"  ovms: {run_dir}/{OV_DIR}/ovms (model name fmnist, version 1) -- see docs/openvino.md")
        return 0

    p.set_defaults(func=run)

