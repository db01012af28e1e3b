"""fmnist.bench_photos: several folders, per-class counts and accuracy, confusion matrix and pairs.

The scoring is checked without a model: tiny photo folders are made on the fly with PIL, laid out like
the real ones (`<label>_<name>/<id>.jpg`), and a stand-in classifier answers from the prepared 28x28
input's shape (a thin item is a Trouser, a wide one a Bag), so every count and confusion is known in
advance. One test runs the command itself with the shipped model (OpenVINO, no TensorFlow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist import bench_photos
from fmnist.data import CLASS_NAMES
from tests import prereq

ROOT = Path(__file__).resolve().parent.parent
TROUSER, BAG = 1, 8


def dark_item_photo(path: Path, width: int, height: int = 200) -> None:
    """A dark grey item (width x height) with some texture on a white 260x260 studio background."""
    rng = np.random.default_rng(width)
    photo = np.full((260, 260, 3), 250, np.uint8)
    top, left = (260 - height) // 2, (260 - width) // 2
    photo[top:top + height, left:left + width] = rng.integers(30, 90, (height, width, 3))
    Image.fromarray(photo).save(path, quality=92)


def stand_in_predict(batch: np.ndarray) -> np.ndarray:
    """Probabilities from shape alone: an item covering under 45 % of the frame is a Trouser, else a Bag."""
    lit = (np.asarray(batch) > 64).mean((1, 2))
    out = np.zeros((len(batch), 10), np.float32)
    out[np.arange(len(batch)), np.where(lit < 0.45, TROUSER, BAG)] = 1.0
    return out


@pytest.fixture()
def folders(tmp_path) -> tuple[Path, Path]:
    """Folder A: 4 trousers (one of them wide: read as a Bag), 3 bags (one thin: read as a Trouser), a
    broken file, a folder without a label and a text file. Folder B: 2 thin trousers."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, layout in ((a, {TROUSER: [50, 60, 70, 200], BAG: [200, 190, 55]}), (b, {TROUSER: [40, 45]})):
        for label, widths in layout.items():
            sub = folder / f"{label}_{CLASS_NAMES[label].replace('/', '_')}"
            sub.mkdir(parents=True)
            for k, width in enumerate(widths):
                dark_item_photo(sub / f"{1000 + k}.jpg", width)
    (a / "1_Trouser" / "broken.jpg").write_bytes(b"not a photo")
    (a / "1_Trouser" / "notes.txt").write_text("ignored: not an image suffix")
    (a / "unlabelled").mkdir()
    dark_item_photo(a / "unlabelled" / "x.jpg", 100)
    return a, b


def test_score_counts_and_confusion():
    scored = bench_photos.score([0, 0, 0, 6, 6, 3], [0, 6, 6, 0, 6, 3])
    assert scored["images"] == 6 and scored["correct"] == 3 and scored["accuracy"] == 0.5
    assert [(c["class"], c["n"], c["correct"]) for c in scored["classes"]] == [
        ("T-shirt/top", 3, 1), ("Dress", 1, 1), ("Shirt", 2, 1)]
    matrix = np.array(scored["confusion"]["matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 6 and matrix[0, 6] == 2 and matrix[6, 0] == 1
    assert [(p["true"], p["predicted"], p["count"]) for p in scored["confused_pairs"]] == [
        ("T-shirt/top", "Shirt", 2), ("Shirt", "T-shirt/top", 1)]
    assert scored["confused_pairs"][0]["share_of_true"] == pytest.approx(2 / 3)
    assert bench_photos.score([], [])["accuracy"] == 0.0


def test_bench_folders_per_folder_and_overall(folders):
    a, b = folders
    result = bench_photos.bench_folders([a, b], ["pipeline", "resize"], stand_in_predict)
    assert result["images"] == 9
    assert [Path(s["file"]).name for s in result["skipped"]] == ["broken.jpg"]
    first, second = result["folders"]
    assert first["images"] == 7 and second["images"] == 2
    pipe = first["methods"]["pipeline"]
    assert [(c["class"], c["n"], c["correct"]) for c in pipe["classes"]] == [("Trouser", 4, 3), ("Bag", 3, 2)]
    matrix = np.array(pipe["confusion"]["matrix"])
    assert matrix[TROUSER, TROUSER] == 3 and matrix[TROUSER, BAG] == 1
    assert matrix[BAG, BAG] == 2 and matrix[BAG, TROUSER] == 1 and matrix.sum() == 7
    assert {(p["true"], p["predicted"], p["count"]) for p in pipe["confused_pairs"]} == {
        ("Trouser", "Bag", 1), ("Bag", "Trouser", 1)}
    overall = result["methods"]["pipeline"]
    assert [(c["class"], c["n"], c["correct"]) for c in overall["classes"]] == [("Trouser", 6, 5), ("Bag", 3, 2)]
    assert overall["accuracy"] == pytest.approx(7 / 9)
    assert overall["per_class"] == {"Trouser": pytest.approx(5 / 6), "Bag": pytest.approx(2 / 3)}
    # The plain resize squashes every photo to the full frame: all read as bags by the stand-in.
    resize = result["methods"]["resize"]
    assert np.array(resize["confusion"]["matrix"])[TROUSER, BAG] == 6 and resize["correct"] == 3


def test_text_report_shows_counts_matrix_and_pairs(folders, capsys):
    a, b = folders
    result = {"run": "stand-in", "backend": "none",
              **bench_photos.bench_folders([a, b], ["pipeline"], stand_in_predict)}
    bench_photos.print_report(result, "pipeline")
    out = capsys.readouterr()
    assert "all 2 folders: 9 photos" in out.out
    assert "83.3% (  5/6  )" in out.out  # overall Trouser row: accuracy with its counts
    assert "most confused: Trouser -> Bag 1 (25%); Bag -> Trouser 1 (33%)" in out.out
    header = next(line for line in out.out.splitlines() if line.startswith("true \\ predicted"))
    assert header.split()[3:] == list(bench_photos.SHORT_NAMES)
    bag_rows = [line.split()[1:] for line in out.out.splitlines() if line.startswith("Bag ") and "%" not in line]
    assert bag_rows[0] == [".", "1", ".", ".", ".", ".", ".", ".", "2", "."]  # folder a: the Bag row
    assert "broken.jpg" in out.err


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist", "bench", "photos", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_refuses_bad_arguments_clearly(folders, tmp_path):
    a, _ = folders
    for args, message in (([str(tmp_path / "nowhere")], "is not a folder"),
                          ([str(a), "--methods", "magic"], "unknown method"),
                          ([str(a), "--methods", "resize", "--confusion", "pipeline"], "not one of the measured"),
                          ([str(tmp_path / "a" / "unlabelled")], "no images")):
        done = run_cli(*args, "--backend", "openvino-fp32")  # keras would import TensorFlow first (seconds)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_cli_with_the_shipped_model_scores_several_folders(folders):
    prereq.require_shipped_model()
    a, b = folders
    done = run_cli(str(a), str(b), "--backend", "openvino-fp32", "--methods", "resize,pipeline", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["images"] == 9 and [f["images"] for f in result["folders"]] == [7, 2]
    for method in result["methods"].values():
        assert np.array(method["confusion"]["matrix"]).sum() == 9
        assert sum(c["n"] for c in method["classes"]) == 9
        assert method["correct"] == sum(c["correct"] for c in method["classes"])
