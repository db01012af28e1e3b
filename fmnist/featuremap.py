"""Where it sits: a 2-D map of the test set in the model's own feature space, computed once per run and
stored with it (the `map/` bundle, verified by its own manifest and the run's, like `trust/`).

How it is made (`compute`):

* the penultimate features (the layer before the classifier) of a stratified subset of the test set
  through the run's Keras model (`ITEMS` = 5,000 of the 10,000 items: t-SNE of 5,000 items takes
  about 22 CPU seconds, of all 10,000 about 56, 94 s of wall time on this shared machine; a run
  trained with `--limit N` maps N/4 items, at least 1,000, so a quick try-out stays quick: 1,000
  items take about 3 CPU seconds; docs/explain.md);
* PCA of the L2-normalised features to `PCA_DIMS` dimensions (`familiarity.fit_projection`, as the
  trust bundle's neighbour reference), then scikit-learn's t-SNE to 2-D with a fixed seed.

What is stored (`map/map.npz`, about 0.4 MB, and `map/map.json`): the 2-D positions (float16), each
item's index in the test set, its true label and the run's prediction (argmax of its test_probs.npy,
the answers users see), the PCA (mean, components) and the items' PCA coordinates (float16).

Placing a new input (`place`): t-SNE has no transform for points it was not fitted on, so a new image
goes where its `PLACE_K` (10) nearest mapped items in the PCA space lie: the mean of their 2-D
positions. An image like a cluster's items lands inside that cluster; an unfamiliar one lands between
clusters or on the edge of the nearest one (the map does not show distance: the unfamiliar score
does).

Computing needs TensorFlow (the CLI or the training child process, never the web server); loading
and placing need only NumPy.
"""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

BUNDLE = "map"
MAP_FILE = "map.npz"
INFO_FILE = "map.json"
FORMAT = "fmnist-map/1"
ITEMS = 5000  # test items on the map (stratified); all of them when the test set is smaller
PCA_DIMS = 30
TSNE_ITERATIONS = 500
PERPLEXITY = 30.0
SEED = 0
PLACE_K = 10
MIN_ITEMS = 10
MIN_QUICK_ITEMS = 1000  # the smallest map of a run trained on a limited training set
ARRAYS = ("coords", "index", "labels", "predictions", "mean", "components", "reference")


class MapError(Exception):
    """A run's map is missing, tampered or malformed (one-line message)."""


@dataclass(frozen=True)
class FeatureMap:
    """A run's loaded map: N test items with 2-D positions and what placing new inputs needs."""

    coords: np.ndarray  # (N, 2) float32 t-SNE positions
    index: np.ndarray  # (N,) index of each point in the test set
    labels: np.ndarray  # (N,) true class
    predictions: np.ndarray  # (N,) the run's answer (argmax of test_probs.npy)
    projection: object  # familiarity.Projection: PCA of the L2-normalised penultimate features
    reference: np.ndarray  # (N, PCA_DIMS) float32 PCA coordinates of the points
    info: dict

    @property
    def mistakes(self) -> np.ndarray:
        """(N,) bool: the run's answer differs from the true label."""
        return self.predictions != self.labels


def map_items(labels: np.ndarray, items: int = ITEMS, seed: int = SEED) -> np.ndarray:
    """Sorted test-set indices of the items on the map: a stratified subset of `items` (all if fewer)."""
    from fmnist.data import stratified_limit

    return stratified_limit(np.asarray(labels), items, seed)


def items_for(limit: int | None) -> int:
    """How many test items a run's map holds: `ITEMS`, fewer for a run trained on a `limit` of the
    training set (a quarter of them, at least 1,000: a quick try-out gets a quick map)."""
    return ITEMS if not limit else int(min(ITEMS, max(MIN_QUICK_ITEMS, limit // 4)))


def embed(reference: np.ndarray, seed: int = SEED, iterations: int = TSNE_ITERATIONS) -> np.ndarray:
    """(N, 2) float32 t-SNE of PCA coordinates (scikit-learn, Barnes-Hut, fixed seed, one thread)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    n = len(reference)
    if n < MIN_ITEMS:
        raise MapError(f"a map needs at least {MIN_ITEMS} items, got {n}")
    # perplexity must stay below the number of points (tiny test sets)
    perplexity = float(min(PERPLEXITY, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                max_iter=max(250, int(iterations)), random_state=seed, n_jobs=1)
    # One OpenMP thread: on this shared 2-core machine two threads took twice the wall time and 1.8x the
    # CPU time (5,000 items: 92 s vs 49 s at load 8; threads spin at every iteration's barrier), and
    # 1,000 items took 18 CPU s instead of 3. The limit must be set after scikit-learn's OpenMP is loaded.
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(np.asarray(reference, dtype=np.float32)).astype(np.float32)


def build(features: np.ndarray, labels: np.ndarray, predictions: np.ndarray, index: np.ndarray,
          dims: int = PCA_DIMS, seed: int = SEED, iterations: int = TSNE_ITERATIONS) -> dict[str, np.ndarray]:
    """The map's arrays from penultimate features (N, D) of N test items: PCA then t-SNE. Pure NumPy
    and scikit-learn (tests call it on synthetic features)."""
    from fmnist.familiarity import fit_projection, project

    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or not (len(features) == len(labels) == len(predictions) == len(index)):
        raise MapError(f"features {features.shape}, labels, predictions and indices must have one row per item")
    projection = fit_projection(features, min(dims, features.shape[1], len(features)))
    reference = project(projection, features)
    coords = embed(reference, seed, iterations)
    return {"coords": coords.astype(np.float16), "index": np.asarray(index, dtype=np.int32),
            "labels": np.asarray(labels, dtype=np.uint8), "predictions": np.asarray(predictions, dtype=np.uint8),
            "mean": projection.mean.astype(np.float32), "components": projection.components.astype(np.float32),
            "reference": reference.astype(np.float16)}


def compute(run_dir: str | Path, dataset, progress: Callable[[str], None] = lambda text: None) -> dict[str, bytes]:
    """The map bundle's files for a run ({"map/map.npz": bytes, "map/map.json": bytes}): features of
    the test items through its Keras model (TensorFlow: not for the web server), PCA, t-SNE."""
    from fmnist.explain import penultimate_features
    from fmnist.keras_backend import load_model
    from fmnist.runs import checked_run, load_test_probs, read_json

    run_dir = Path(run_dir)
    checked_run(run_dir)
    probs = load_test_probs(run_dir)
    if len(probs) != len(dataset.y_test):
        raise MapError(f"{run_dir}'s test_probs.npy has {len(probs)} rows, the test set {len(dataset.y_test)}: "
                       "not the data set it was evaluated on")
    index = map_items(dataset.y_test, items_for(read_json(run_dir / "config.json").get("limit")))
    t0 = time.perf_counter()
    progress(f"features of {len(index):,} test items")
    features, _ = penultimate_features(load_model(run_dir), dataset.x_test[index])
    t1 = time.perf_counter()
    progress(f"t-SNE of {len(index):,} items")
    arrays = build(features, dataset.y_test[index], probs[index].argmax(axis=1), index)
    t2 = time.perf_counter()
    info = {"format": FORMAT, "items": int(len(index)), "test_items": int(len(dataset.y_test)),
            "pca_dims": int(arrays["components"].shape[0]), "tsne_iterations": TSNE_ITERATIONS,
            "perplexity": float(min(PERPLEXITY, (len(index) - 1) / 3)), "seed": SEED, "place_k": PLACE_K,
            "seconds": {"features": round(t1 - t0, 2), "tsne": round(t2 - t1, 2)}}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return {f"{BUNDLE}/{MAP_FILE}": buffer.getvalue(),
            f"{BUNDLE}/{INFO_FILE}": json.dumps(info, indent=2).encode("utf-8")}


def has_map(run_dir: str | Path) -> bool:
    """Whether the run holds a map bundle (not whether it is intact: `load` checks that)."""
    return (Path(run_dir) / BUNDLE).is_dir()


def store(run_dir: str | Path, dataset, progress: Callable[[str], None] = lambda text: None,
          force: bool = False) -> dict:
    """Compute a run's map and add it to the run (runs.add_files: staged, swapped in by one rename,
    recorded in the manifests), unless it already holds an intact one (then nothing is computed;
    `force` computes it again). A tampered map is replaced. Returns map.json's content."""
    from fmnist.runs import add_files

    if has_map(run_dir) and not force:
        try:
            return load(run_dir).info
        except MapError as exc:
            progress(f"{exc}: computing it again")
    files = compute(run_dir, dataset, progress)
    add_files(run_dir, files)
    return json.loads(files[f"{BUNDLE}/{INFO_FILE}"])


def _verified_bytes(run_dir: Path) -> dict[str, bytes]:
    """The bundle's files, read once and checked against the bundle's manifest and the run's."""
    from fmnist.runs import read_verified_bundle

    if not (run_dir / BUNDLE).is_dir():
        raise MapError(f"{run_dir} has no feature map: run `python -m fmnist.featuremap --run {run_dir}`")
    try:
        return read_verified_bundle(run_dir, BUNDLE, (MAP_FILE, INFO_FILE))
    except ValueError as exc:
        raise MapError(f"refusing the feature map of {run_dir}: {exc}") from exc


def load(run_dir: str | Path) -> FeatureMap | None:
    """A run's verified map, or None when it has none. MapError (one line) when tampered or malformed."""
    from fmnist.familiarity import Projection

    run_dir = Path(run_dir)
    if not has_map(run_dir):
        return None
    files = _verified_bytes(run_dir)
    try:
        info = json.loads(files[INFO_FILE].decode("utf-8"))
        if info.get("format") != FORMAT:
            raise ValueError(f"unknown format {info.get('format')!r}")
        with np.load(io.BytesIO(files[MAP_FILE]), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ARRAYS}
        projection = Projection.from_arrays(arrays)
        coords = arrays["coords"].astype(np.float32)
        reference = arrays["reference"].astype(np.float32)
        n = len(coords)
        if coords.shape != (n, 2) or reference.shape != (n, projection.components.shape[0]):
            raise ValueError(f"coords {coords.shape} and reference {reference.shape} do not fit together")
        if any(arrays[k].shape != (n,) for k in ("index", "labels", "predictions")):
            raise ValueError("index, labels and predictions must have one entry per point")
        if not (np.isfinite(coords).all() and np.isfinite(reference).all()):
            raise ValueError("positions must be finite")
        if n and (arrays["labels"].max() > 9 or arrays["predictions"].max() > 9 or arrays["index"].min() < 0):
            raise ValueError("labels and predictions must be classes 0-9, indices non-negative")
    except (KeyError, ValueError, TypeError, UnicodeDecodeError, OSError) as exc:
        raise MapError(f"refusing the feature map of {run_dir}: malformed ({exc})".splitlines()[0]) from exc
    return FeatureMap(coords, arrays["index"].astype(np.int64), arrays["labels"].astype(np.int64),
                      arrays["predictions"].astype(np.int64), projection, reference, info)


def place(fmap: FeatureMap, penultimate_features: np.ndarray, k: int = PLACE_K) -> np.ndarray:
    """(N, 2) positions on the map for new inputs' penultimate features (N, D): the mean position of
    each input's k nearest mapped items in the map's PCA space (t-SNE cannot transform new points)."""
    from fmnist.familiarity import nearest_neighbours, project

    features = np.asarray(penultimate_features, dtype=np.float32)
    if features.ndim == 1:
        features = features[None, :]
    if features.ndim != 2 or features.shape[1] != fmap.projection.mean.shape[0]:
        raise ValueError(f"features {features.shape} do not fit the map's {fmap.projection.mean.shape[0]} "
                         "features per item")
    if len(features) == 0:
        return np.zeros((0, 2), dtype=np.float32)
    idx, _ = nearest_neighbours(fmap.reference, project(fmap.projection, features), k=k)
    return fmap.coords[idx].mean(axis=1).astype(np.float32)


def faithfulness(fmap: FeatureMap, test_features: np.ndarray, test_labels: np.ndarray,
                 test_predictions: np.ndarray) -> dict:
    """How well the map keeps what the model sees (features of the whole test set, rows = test index):
    for mapped points, how often the nearest other point on the map has the same true label; for test
    items left off the map and placed with `place`, how often the nearest mapped point has their true
    label and the model's answer; how far a mapped item placed from its own features lands from its
    own position (median, as a fraction of the map's diagonal)."""
    from fmnist.familiarity import nearest_neighbours

    on_map = nearest_neighbours(fmap.coords, fmap.coords, k=2)[0][:, 1]  # [:, 0] is the point itself
    result = {"points": int(len(fmap.coords)),
              "map_nearest_same_label": float(np.mean(fmap.labels[on_map] == fmap.labels))}
    off = np.setdiff1d(np.arange(len(test_labels)), fmap.index)
    if len(off):
        nearest = nearest_neighbours(fmap.coords, place(fmap, test_features[off]), k=1)[0][:, 0]
        result.update(placed_items=int(len(off)),
                      placed_nearest_same_label=float(np.mean(fmap.labels[nearest] == test_labels[off])),
                      placed_nearest_same_answer=float(np.mean(fmap.predictions[nearest] == test_predictions[off])))
    own = place(fmap, test_features[fmap.index])
    diagonal = float(np.linalg.norm(fmap.coords.max(axis=0) - fmap.coords.min(axis=0)))
    result["own_position_error"] = float(np.median(np.linalg.norm(own - fmap.coords, axis=1)) / max(diagonal, 1e-9))
    return result


def measure(run_dir: str | Path, dataset) -> dict:
    """`faithfulness` of a run's stored map on the whole test set (features through its Keras model)."""
    from fmnist.explain import penultimate_features
    from fmnist.keras_backend import load_model
    from fmnist.runs import load_test_probs

    fmap = load(run_dir)
    if fmap is None:
        raise MapError(f"{run_dir} has no feature map: run `python -m fmnist.featuremap --run {run_dir}`")
    features, _ = penultimate_features(load_model(run_dir), dataset.x_test)
    return faithfulness(fmap, features, np.asarray(dataset.y_test), load_test_probs(run_dir).argmax(axis=1))


def main(argv: list[str] | None = None) -> int:
    """`python -m fmnist.featuremap [--run RUN] [--force] [--measure]`: compute and store a run's feature map
    (nothing is computed when it has an intact one)."""
    import argparse

    from fmnist.data import DataError, load_fashion_mnist
    from fmnist.runs import RunError, resolve_checked_run

    parser = argparse.ArgumentParser(prog="python -m fmnist.featuremap", description=main.__doc__)
    parser.add_argument("--run", help="run name or path (default: the shipped model, else the newest run)")
    parser.add_argument("--runs-dir")
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: FMNIST_DATA_DIR)")
    parser.add_argument("--force", action="store_true", help="compute it again even if the run has one")
    parser.add_argument("--measure", action="store_true",
                        help="then measure how faithful it is on the whole test set (featuremap.faithfulness)")
    args = parser.parse_args(argv)
    try:
        run_dir = resolve_checked_run(args.run, args.runs_dir)
        dataset = load_fashion_mnist(args.data_dir, download=False)
        info = store(run_dir, dataset, progress=lambda text: print(text, file=sys.stderr, flush=True),
                     force=args.force)
        if args.measure:
            info = {**info, "faithfulness": measure(run_dir, dataset)}
    except (RunError, MapError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"run": str(run_dir), **info}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
