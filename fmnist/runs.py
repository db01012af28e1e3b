"""Run directories: written atomically, verified by a sha256 manifest before anything is loaded.

Layout of a run (`<runs root>/<name>/`):
    config.json      TrainConfig as plain values (rebuilds the model from our own code)
    history.json     per-epoch train/validation metrics and per-batch loss/accuracy
    model.keras      Keras weights (+ config, for interop; we never deserialise that config)
    metrics.json     evaluation on the test set (fmnist.evaluation)
    test_probs.npy   (10000, 10) float32 test-set probabilities
    status.json      completed / stopped / failed, timings, message
    manifest.json    sha256 and size of every other file; written last
A run is built in a hidden staging folder and renamed into place only when complete, so a run
killed while saving is never listed. Files added later (OpenVINO IR) go through `add_files`,
which writes temporary files, fsyncs them, renames them and then replaces the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ENV_VAR = "FMNIST_RUNS_DIR"
MANIFEST = "manifest.json"
STATUS = "status.json"
REQUIRED = ("config.json", "history.json", "model.keras", STATUS)
STAGING_PREFIX = ".staging-"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default-model"
DEFAULT_NAME = "default"
BUNDLES = ("openvino", "trust", "map", "sweep")  # sub-folders added after training, each committed by one rename
BUNDLE_MANIFEST = "bundle-manifest.json"
RUN_FORMAT, BUNDLE_FORMAT = "fmnist-run/1", "fmnist-bundle/1"
LOCK_FILE = ".lock"  # hidden: never part of a manifest, never loaded
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


class RunError(Exception):
    """A run directory is missing, incomplete or was changed after it was written."""


@dataclass
class RunInfo:
    path: Path
    name: str
    status: str  # completed | stopped | failed | broken
    reason: str = ""
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)  # test/val accuracy, params, seconds, created
    is_default: bool = False
    bundles: dict = field(default_factory=dict)  # e.g. {"openvino": "ok"} or {"openvino": reason}

    @property
    def usable(self) -> bool:
        """True when the run has a verified model that can be loaded."""
        return self.status in ("completed", "stopped") and not self.reason

    def label(self) -> str:
        acc = self.summary.get("test_accuracy")
        acc_text = f"{acc * 100:.2f}%" if isinstance(acc, (int, float)) else "n/a"
        tag = "shipped default" if self.is_default else config_label(self.config)
        return f"{self.name} ({tag}, {acc_text})"


_LABEL_FIELDS = {"arch": "architecture", "widths": "widths", "dropout": "dropout", "epochs": "epochs",
                 "batch_size": "batch", "optimizer": "optimizer", "learning_rate": "lr", "schedule": "schedule",
                 "warmup_epochs": "warm-up", "weight_decay": "weight decay", "label_smoothing": "smoothing",
                 "augment_flip": "flips", "augment_shift": "shift", "augment_scale": "zoom", "ema": "ema",
                 "tta_flip": "flip averaging", "tta_shift": "shift averaging", "val_fraction": "validation", "seed": "seed",
                 "limit": "training set", "precision": "precision"}


def config_label(config: dict) -> str:
    """A short name that tells configurations apart: "fast", "fast (custom: epochs 5, training set
    5,000)", or the architecture for settings made by hand. Runs, Results and Compare show it."""
    from fmnist.config import PRESETS, TrainConfig

    preset = config.get("preset")
    if preset not in PRESETS:
        return f"custom {config.get('arch', '?')}"
    from fmnist.models import DEFAULTS

    reference = TrainConfig(**PRESETS[preset]).to_dict()

    def resolved(values: dict, name: str):
        """None widths or dropout mean the architecture's defaults: equal to them, not a change."""
        value = values.get(name, reference[name])
        arch = values.get("arch", reference["arch"])
        if name in ("widths", "dropout") and value is None and arch in DEFAULTS:
            value = DEFAULTS[arch][name]
        if name == "dropout" and isinstance(value, (int, float)):
            value = (value, value)
        return list(value) if isinstance(value, (list, tuple)) else value

    changes = []
    for name, short in _LABEL_FIELDS.items():
        value, ref = resolved(config, name), resolved(reference, name)
        if value == ref:
            continue
        if isinstance(value, list):
            changes.append(f"{short} {','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in value)}")
        else:
            text = "all" if value is None else f"{value:,}" if isinstance(value, int) and not isinstance(
                value, bool) else f"{value:g}" if isinstance(value, float) else str(value).lower()
            changes.append(f"{short} {text}")
    return f"{preset} (custom: {', '.join(changes)})" if changes else preset


FULL_TRAINING_SET = 60_000  # Fashion-MNIST's training images (validation included)


def run_row(info: RunInfo) -> dict:
    """One run flattened for a table (the CLI's `runs`, the Compare page): name, path, status and why
    broken, the configuration's name (`config_label`; None when the config is unreadable), preset,
    architecture, training-set size, then the summary (accuracies as fractions, epochs_done, params,
    seconds, images_per_s, created, ...)."""
    config = info.config
    return {"name": info.name, "path": str(info.path), "status": info.status, "reason": info.reason,
            "preset": config.get("preset"), "arch": config.get("arch"),
            "configuration": "shipped default" if info.is_default else config_label(config) if config else None,
            "training_set": (config.get("limit") or FULL_TRAINING_SET) if config else None, **info.summary}


def runs_root(root: str | os.PathLike | None = None) -> Path:
    """The runs folder: the argument, else $FMNIST_RUNS_DIR, else ./runs."""
    return Path(root or os.environ.get(ENV_VAR) or "runs").expanduser()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write to a unique temporary name beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False).encode())


def read_json(path: Path) -> Any:
    with open(path, "rb") as fh:
        return json.loads(fh.read().decode("utf-8"))


# ---- manifests: the one place that builds and checks them ----------------------------------------
# A manifest is {"format": ..., "files": {relative path: {"sha256": hex, "bytes": size}}}: the run's
# own (manifest.json, every file of the run) and each bundle's (openvino/bundle-manifest.json).

def file_entry(content: Path | bytes) -> dict:
    """The manifest entry of a file, or of bytes about to be written: {"sha256", "bytes"}."""
    if isinstance(content, (bytes, bytearray, memoryview)):
        return {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    return {"sha256": sha256_file(Path(content)), "bytes": Path(content).stat().st_size}


def entry_mismatch(expected: dict, actual: dict) -> str | None:
    """None when two manifest entries agree; "size" or "sha256" naming the first difference."""
    if actual.get("bytes") != expected.get("bytes"):
        return "size"
    if actual.get("sha256") != expected.get("sha256"):
        return "sha256"
    return None


def build_manifest(folder: str | os.PathLike, format: str = RUN_FORMAT) -> dict:
    """The manifest of every file under `folder` (manifests and hidden files left out)."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in (MANIFEST, BUNDLE_MANIFEST) and not path.name.startswith("."):
            files[path.relative_to(folder).as_posix()] = file_entry(path)
    return {"format": format, "files": files}


def write_manifest(folder: str | os.PathLike) -> Path:
    """Write a run folder's manifest.json for the files it holds now (atomically)."""
    return atomic_write_json(Path(folder) / MANIFEST, build_manifest(folder))


def manifest_files(folder: str | os.PathLike, name: str = MANIFEST) -> dict:
    """{relative path: entry} of a run's manifest (or a bundle's, name=BUNDLE_MANIFEST). OSError when
    it cannot be read, ValueError when it is not a manifest."""
    manifest = read_json(Path(folder) / name)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise ValueError(f"{name} is malformed")
    return files


def manifest_digest(run_dir: str | os.PathLike) -> str:
    """sha256 of a run's manifest.json as written ("missing" when unreadable): it changes whenever any
    file of the run does, so caches key on it."""
    try:
        return hashlib.sha256((Path(run_dir) / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return "missing"


def new_run_name(tag: str) -> str:
    tag = re.sub(r"[^A-Za-z0-9-]+", "-", tag).strip("-")[:30] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}-{uuid.uuid4().hex[:4]}"


class RunWriter:
    """Builds a run in a hidden staging folder; `commit` makes it appear complete in one rename."""

    def __init__(self, root: str | os.PathLike | None, name: str):
        self.root = runs_root(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if not _NAME_RE.match(name):
            raise RunError(f"invalid run name {name!r}")
        self.name = name
        self.staging = self.root / f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex[:6]}"
        self.staging.mkdir()

    def path(self, rel: str) -> Path:
        target = self.staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_json(self, rel: str, obj: Any) -> None:
        atomic_write_json(self.path(rel), obj)

    def write_npy(self, rel: str, array: np.ndarray) -> None:
        target = self.path(rel)
        with open(target, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())

    def save_model(self, model) -> None:
        model.save(self.path("model.keras"))

    def commit(self, status: dict) -> Path:
        """Write status and manifest, fsync everything, rename into place. Returns the run path."""
        self.write_json(STATUS, status)
        for path in self.staging.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        write_manifest(self.staging)
        final = self.root / self.name
        if final.exists():
            raise RunError(f"run {final} already exists")
        os.rename(self.staging, final)
        _fsync_dir(self.root)
        return final

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def verify_run(path: str | os.PathLike) -> RunInfo:
    """Check a run's files against its manifest. Never raises: problems go in `reason`."""
    path = Path(path)
    is_default = path.resolve() == DEFAULT_MODEL_DIR.resolve()
    info = RunInfo(path=path, name=DEFAULT_NAME if is_default else path.name, status="broken",
                   is_default=is_default)
    try:
        if not path.is_dir():
            info.reason = "not a directory"
            return info
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            info.reason = "no manifest.json: incomplete, or not written by Fashion-MNIST Studio"
            return info
        try:
            files = manifest_files(path)
        except ValueError:
            info.reason = "manifest.json is malformed"
            return info
        status_entry = read_json(path / STATUS) if STATUS in files and (path / STATUS).is_file() else {}
        required = [r for r in REQUIRED if not (r == "model.keras" and status_entry.get("status") == "failed")]
        for req in required:
            if req not in files:
                info.reason = f"manifest does not list {req}"
                return info
        for rel, entry in files.items():
            if Path(rel).parts[0] in BUNDLES:
                continue  # verified below against the bundle's own manifest
            target = path / rel
            if ".." in Path(rel).parts or not target.resolve().is_relative_to(path.resolve()):
                info.reason = f"manifest names a path outside the run: {rel}"
                return info
            if not target.is_file():
                info.reason = f"{rel} is missing"
                return info
            problem = entry_mismatch(entry, file_entry(target))
            if problem == "size":
                info.reason = f"{rel} has changed size since it was written (truncated or edited)"
                return info
            if problem:
                info.reason = f"{rel} was modified after it was written (sha256 mismatch)"
                return info
        for folder, subdirs, names in os.walk(path):
            if Path(folder) == path:
                # bundles are checked on their own, against their own manifest; hidden staging
                # leftovers are never loaded (and may be renamed away while we walk)
                subdirs[:] = [d for d in subdirs if d not in BUNDLES and not d.startswith(".")]
            for name in names:
                rel = (Path(folder) / name).relative_to(path).as_posix()
                if rel not in files and name != MANIFEST and not name.startswith("."):
                    info.reason = f"unexpected file {rel} that Fashion-MNIST Studio did not write"
                    return info
        with _run_lock(path, shared=True):
            for bundle in BUNDLES:
                if (path / bundle).exists():
                    info.bundles[bundle] = verify_bundle(path / bundle)
        status = read_json(path / STATUS)
        info.config = read_json(path / "config.json")
        info.status = str(status.get("status", "broken"))
        metrics_summary = {}
        if (path / "metrics.json").is_file() and "metrics.json" in files:
            metrics = read_json(path / "metrics.json")
            metrics_summary = {k: metrics.get(k) for k in ("test_accuracy", "test_loss")}
        info.summary = {**{k: status.get(k) for k in ("created", "seconds", "epochs_done", "params",
                                                      "best_val_accuracy", "train_accuracy",
                                                      "images_per_s", "message")}, **metrics_summary}
        if info.status not in ("completed", "stopped", "failed"):
            info.reason = f"unknown status {info.status!r}"
            info.status = "broken"
    except (OSError, ValueError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        info.status = "broken"
        info.reason = f"unreadable: {type(exc).__name__}: {exc}"
    return info


def list_runs(root: str | os.PathLike | None = None, include_default: bool = True) -> list[RunInfo]:
    """All runs, newest first, the shipped default model last. Broken runs carry their reason."""
    root = runs_root(root)
    infos = []
    if root.is_dir():
        for child in sorted(root.iterdir(), key=lambda p: p.name, reverse=True):
            if child.is_dir() and not child.name.startswith("."):
                infos.append(verify_run(child))
    if include_default and DEFAULT_MODEL_DIR.is_dir():
        infos.append(verify_run(DEFAULT_MODEL_DIR))
    return infos


def resolve_run(ref: str | os.PathLike | None = None, root: str | os.PathLike | None = None) -> Path:
    """A run path from a path, a run name, 'default', or None (the default model, else newest usable run)."""
    if ref in (None, "", DEFAULT_NAME):
        if DEFAULT_MODEL_DIR.is_dir() or ref == DEFAULT_NAME:
            return DEFAULT_MODEL_DIR
        for info in list_runs(root, include_default=False):
            if info.usable:
                return info.path
        raise RunError("no trained model yet: train one with `python -m fmnist train --preset fast`")
    candidate = Path(ref)
    if candidate.is_dir():
        return candidate
    named = runs_root(root) / str(ref)
    if _NAME_RE.match(str(ref)) and named.is_dir():
        return named
    raise RunError(f"no run called {ref!r} (looked for a folder, and in {runs_root(root)})")


def checked_run(path: str | os.PathLike) -> RunInfo:
    """verify_run, raising RunError unless the run has a usable, untampered model."""
    info = verify_run(path)
    if info.status == "broken":
        raise RunError(f"refusing to load {path}: {info.reason}")
    if info.status == "failed":
        raise RunError(f"run {path} failed and has no model: {info.summary.get('message') or ''}".strip())
    return info


def resolve_checked_run(ref: str | os.PathLike | None = None, root: str | os.PathLike | None = None) -> Path:
    """resolve_run, then checked_run: the path of a usable, untampered run, or RunError saying why not."""
    path = resolve_run(ref, root)
    checked_run(path)
    return path


def load_history(path: str | os.PathLike) -> dict:
    return read_json(Path(path) / "history.json")


def load_metrics(path: str | os.PathLike) -> dict:
    return read_json(Path(path) / "metrics.json")


def load_test_probs(path: str | os.PathLike) -> np.ndarray:
    """The run's (N, 10) test-set probabilities. A file that is not one (a tampered run whose manifest
    was rewritten to match) raises ValueError naming it, never something a gallery would index."""
    file = Path(path) / "test_probs.npy"
    try:
        probs = np.load(file, allow_pickle=False)
    except ValueError as exc:  # pickled objects, not a .npy file
        raise ValueError(f"{file.name} is not a numeric array ({exc})".splitlines()[0]) from exc
    if probs.ndim != 2 or probs.shape[1] != 10 or probs.dtype.kind != "f" or not np.isfinite(probs).all():
        raise ValueError(f"{file.name} holds a {probs.dtype} array of shape {probs.shape}, not (N, 10) "
                         "probabilities")
    return probs


def verify_bundle(folder: Path) -> str:
    """'ok', or why a bundle folder (e.g. RUN/openvino) does not match its own manifest."""
    try:
        files = manifest_files(folder, BUNDLE_MANIFEST)
        for rel, entry in files.items():
            target = folder / rel
            if ".." in Path(rel).parts or not target.is_file():
                return f"{folder.name}/{rel} is missing"
            if entry_mismatch(entry, file_entry(target)):
                return f"{folder.name}/{rel} was modified after it was written (sha256 mismatch)"
        for extra in folder.rglob("*"):
            rel = extra.relative_to(folder).as_posix()
            if extra.is_file() and rel not in files and extra.name != BUNDLE_MANIFEST:
                return f"unexpected file {folder.name}/{rel} that Fashion-MNIST Studio did not write"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        return f"{folder.name}: no valid {BUNDLE_MANIFEST} ({type(exc).__name__})"
    return "ok"



def read_verified_bundle(run_dir: Path, bundle: str, names: tuple[str, ...]) -> dict[str, bytes]:
    """The named files of a run's bundle folder, read once and checked against the bundle's manifest
    and the run's: the bytes a caller parses are the bytes checked (a file swapped after
    verify_bundle is still caught). ValueError with the one-line reason otherwise."""
    folder = Path(run_dir) / bundle
    state = verify_bundle(folder)
    if state != "ok":
        raise ValueError(state)
    try:
        bundle_files = manifest_files(folder, BUNDLE_MANIFEST)
        run_files = manifest_files(run_dir)
    except (OSError, ValueError) as exc:
        raise ValueError(f"unreadable manifest ({exc})".splitlines()[0]) from exc
    out = {}
    for name in names:
        data = (folder / name).read_bytes() if (folder / name).is_file() else None
        if data is None or name not in bundle_files:
            raise ValueError(f"{bundle}/{name} is missing")
        for expected in (bundle_files[name], run_files.get(f"{bundle}/{name}", {})):
            if entry_mismatch(expected, file_entry(data)):
                raise ValueError(f"{bundle}/{name} does not match the manifest (modified after it was written)")
        out[name] = data
    return out


@contextmanager
def _run_lock(run_dir: Path, shared: bool = False):
    """Advisory lock on a run: exclusive while a bundle is swapped, so that two processes exporting
    the same run take turns instead of racing their renames; shared while a bundle is verified, so a
    reader never sees one mid-swap. Readers never create the lock file (the shipped model's folder
    may be read-only): no file means nobody has exported into this run from another process yet.
    POSIX only; on Windows a racing rename fails with an OSError instead."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = run_dir / LOCK_FILE
    if shared and not lock.exists():
        yield
        return
    with open(lock, "rb" if shared else "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def add_files(run_dir: str | os.PathLike, files: dict[str, bytes | Path]) -> None:
    """Add or replace files of a bundle (e.g. "openvino/fp32/model.xml") in a finished run.

    Each bundle folder is rebuilt in a hidden staging folder (old files it keeps + the new ones,
    each fsynced, plus its own manifest) and swapped in by rename, so a crash leaves either the
    old bundle, the new one, or none (export again) and never a half-written one. The run's
    manifest is updated afterwards for information; bundles are verified against their own.
    """
    run_dir = Path(run_dir)
    checked_run(run_dir)
    groups: dict[str, dict[str, bytes | Path]] = {}
    for rel, content in files.items():
        parts = Path(rel).parts
        if ".." in parts or Path(rel).is_absolute() or len(parts) < 2 or parts[0] not in BUNDLES:
            raise RunError(f"invalid file name {rel!r}: files can be added under {', '.join(BUNDLES)}/ only")
        groups.setdefault(parts[0], {})[Path(*parts[1:]).as_posix()] = content
    for bundle, entries in groups.items():
        with _run_lock(run_dir):
            _swap_bundle(run_dir, bundle, entries)


def _swap_bundle(run_dir: Path, bundle: str, entries: dict[str, bytes | Path]) -> None:
    """Rebuild one bundle in staging and rename it into place, then record it in the run manifest."""
    folder = run_dir / bundle
    staging = run_dir / f"{STAGING_PREFIX}{bundle}-{uuid.uuid4().hex[:6]}"
    staging.mkdir()
    try:
        if folder.is_dir() and verify_bundle(folder) == "ok":
            for old in folder.rglob("*"):
                inner = old.relative_to(folder).as_posix()
                if old.is_file() and old.name != BUNDLE_MANIFEST and inner not in entries:
                    target = staging / inner
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(old, target)
        for inner, content in entries.items():
            data = Path(content).read_bytes() if isinstance(content, Path) else content
            target = staging / inner
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        built = build_manifest(staging, BUNDLE_FORMAT)
        bundle_files = built["files"]
        atomic_write_json(staging / BUNDLE_MANIFEST, built)
        _fsync_dir(staging)
        retired = run_dir / f".retired-{bundle}-{uuid.uuid4().hex[:6]}"
        if folder.exists():
            os.rename(folder, retired)
        os.rename(staging, folder)
        _fsync_dir(run_dir)
        shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = read_json(run_dir / MANIFEST)
    manifest["files"] = {k: v for k, v in manifest["files"].items() if Path(k).parts[0] != bundle}
    for inner, entry in bundle_files.items():
        manifest["files"][f"{bundle}/{inner}"] = entry
    atomic_write_json(run_dir / MANIFEST, manifest)
