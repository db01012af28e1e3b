"""Pure post-processing of test-set probabilities: accuracy, loss, confusion, per-class scores.

Everything here takes numpy arrays and returns JSON-ready dicts, so the CLI, the app and the
tests render the same numbers.
"""

from __future__ import annotations

import numpy as np

from fmnist.data import CLASS_NAMES, NUM_CLASSES


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    picked = probs[np.arange(len(labels)), labels.astype(np.int64)]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """10x10 counts: rows are true classes, columns predicted classes."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, predicted, labels=list(range(NUM_CLASSES)))


def per_class_scores(labels: np.ndarray, predicted: np.ndarray) -> list[dict]:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        labels, predicted, labels=list(range(NUM_CLASSES)), zero_division=0
    )
    return [
        {"class": i, "name": CLASS_NAMES[i], "precision": float(p[i]), "recall": float(r[i]),
         "f1": float(f[i]), "support": int(s[i])}
        for i in range(NUM_CLASSES)
    ]


def misclassified(probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Wrong test items, most confident mistakes first."""
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    conf = probs[wrong, predicted[wrong]]
    order = np.argsort(-conf, kind="stable")
    return [
        {"index": int(wrong[i]), "true": int(labels[wrong[i]]), "predicted": int(predicted[wrong[i]]),
         "confidence": float(conf[i])}
        for i in order
    ]


def confused_pairs(matrix: np.ndarray, top: int = 10) -> list[dict]:
    """Off-diagonal cells by count: (true X predicted as Y), largest first."""
    cells = [
        (int(matrix[t, p]), t, p) for t in range(NUM_CLASSES) for p in range(NUM_CLASSES)
        if t != p and matrix[t, p] > 0
    ]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [
        {"true": t, "predicted": p, "true_name": CLASS_NAMES[t], "predicted_name": CLASS_NAMES[p], "count": n}
        for n, t, p in cells[:top]
    ]


def evaluate_probabilities(probs: np.ndarray, labels: np.ndarray) -> dict:
    """All test metrics from (N, 10) probabilities and (N,) labels, as a JSON-ready dict."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probs.ndim != 2 or probs.shape != (len(labels), NUM_CLASSES):
        raise ValueError(f"expected probabilities of shape ({len(labels)}, 10), got {probs.shape}")
    predicted = probs.argmax(1)
    matrix = confusion(labels, predicted)
    return {
        "test_accuracy": float(np.mean(predicted == labels)),
        "test_loss": cross_entropy(probs, labels),
        "n_test": int(len(labels)),
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class_scores(labels, predicted),
        "misclassified": misclassified(probs, labels),
        "confused_pairs": confused_pairs(matrix),
    }


def cell_items(probs: np.ndarray, labels: np.ndarray, true_class: int, predicted_class: int) -> list[dict]:
    """Test items in one confusion-matrix cell (true X predicted as Y), most confident first."""
    predicted = probs.argmax(1)
    idx = np.flatnonzero((labels == true_class) & (predicted == predicted_class))
    conf = probs[idx, predicted_class]
    order = np.argsort(-conf, kind="stable")
    return [{"index": int(idx[i]), "true": true_class, "predicted": predicted_class,
             "confidence": float(conf[i])} for i in order]


def format_report(metrics: dict) -> str:
    """Accuracy, per-class table and confusion matrix as plain text for the CLI."""
    lines = [
        f"Test accuracy {metrics['test_accuracy'] * 100:.2f}%   loss {metrics['test_loss']:.4f}   "
        f"({metrics['n_test']:,} test images)",
        "",
        f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
    ]
    for row in metrics["per_class"]:
        lines.append(f"{row['name']:<12} {row['precision']:>9.3f} {row['recall']:>7.3f} "
                     f"{row['f1']:>7.3f} {row['support']:>8}")
    # columns numbered, rows named in full: ten full names side by side do not fit a terminal,
    # and names cut to 7 letters ("Pullove", "Ankle b") read as typos
    lines += ["", "Confusion matrix (rows: true class, columns: predicted class by number)"]
    lines.append(" " * 16 + "".join(f"{i:>6}" for i in range(len(CLASS_NAMES))))
    for i, (name, row) in enumerate(zip(CLASS_NAMES, metrics["confusion_matrix"])):
        lines.append(f"{i} {name:<14}" + "".join(f"{v:>6}" for v in row))
    if metrics.get("confused_pairs"):
        lines += ["", "Most confused pairs"]
        for pair in metrics["confused_pairs"][:5]:
            lines.append(f"  {pair['true_name']} -> {pair['predicted_name']}: {pair['count']}")
    return "\n".join(lines)
