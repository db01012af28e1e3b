"""Plotly figure builders: pure functions from plain data (lists, dicts, arrays) to figures.

The app renders these; tests inspect them. Nothing here trains, loads or imports Streamlit.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from fmnist.data import CLASS_NAMES

SHORT_NAMES = tuple(n.split("/")[0] for n in CLASS_NAMES)
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#e4572e"


def _go():
    import plotly.graph_objects as go

    return go


def _layout(fig, title: str = "", height: int = 320, **kwargs):
    fig.update_layout(title=dict(text=title, x=0, xanchor="left", font=dict(size=14)) if title else None,
                      height=height, margin=dict(l=10, r=10, t=56 if title else 24, b=10),
                      # the legend sits top left: Plotly's toolbar (top right) covered it there
                      legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0), **kwargs)
    return fig


def smooth(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with TensorBoard's bias correction (the first points are not
    pulled towards zero); non-finite values are carried over as they are."""
    out, avg, n = [], 0.0, 0
    for v in values:
        if not np.isfinite(v):
            out.append(v)
            continue
        n += 1
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** n))
    return out


def batch_figure(batches: Sequence[Sequence[float]], steps_per_epoch: int | None = None):
    """Live loss (left axis) and accuracy (right axis) of each batch, smoothed, from
    (step, batch loss, batch accuracy) rows.

    Built with a plain second y axis rather than make_subplots (several times slower): the Train
    page redraws this figure every few seconds while a training runs.
    """
    go = _go()
    steps = [b[0] for b in batches]
    fig = go.Figure([
        go.Scatter(x=steps, y=smooth([b[1] for b in batches]), name="loss", mode="lines",
                   line=dict(color=TRAIN_COLOUR, width=1.5)),
        go.Scatter(x=steps, y=smooth([b[2] for b in batches]), name="accuracy", mode="lines", yaxis="y2",
                   line=dict(color=VAL_COLOUR, width=1.5)),
    ])
    fig.update_layout(
        yaxis=dict(title_text="loss", rangemode="tozero"),
        yaxis2=dict(title_text="accuracy", range=[0, 1], dtick=0.2, tickformat=".0%", overlaying="y", side="right",
                    showgrid=False),
        xaxis=dict(title_text="step" if not steps_per_epoch else f"step ({steps_per_epoch} per epoch)"),
    )
    return _layout(fig, "Loss and accuracy per batch (smoothed)", uirevision="batches")


def learning_rate_figure(preview: dict):
    """The learning rate over the planned training (fmnist.training.learning_rate_preview)."""
    go = _go()
    per_epoch = preview["steps_per_epoch"]
    epochs = [s / per_epoch for s in preview["steps"]]
    fig = go.Figure(go.Scatter(x=epochs, y=preview["learning_rate"], mode="lines", name="learning rate",
                               line=dict(color=TRAIN_COLOUR, width=2),
                               hovertemplate="epoch %{x:.2f}<br>learning rate %{y:.2e}<extra></extra>"))
    fig.update_layout(xaxis=dict(title_text=f"epoch ({per_epoch:,} steps each)", rangemode="tozero"),
                      yaxis=dict(title_text="learning rate", rangemode="tozero", exponentformat="e"),
                      showlegend=False)
    return _layout(fig, "Learning rate over the training", height=240)


def epoch_figure(epochs: Sequence[dict], metric: str = "accuracy"):
    """Per-epoch train and validation curves for `metric` ("accuracy" or "loss")."""
    go = _go()
    fig = go.Figure()
    x = [e["epoch"] for e in epochs]
    fig.add_trace(go.Scatter(x=x, y=[e.get(metric) for e in epochs], name=f"train {metric}",
                             mode="lines+markers", line=dict(color=TRAIN_COLOUR)))
    if any(e.get(f"val_{metric}") is not None for e in epochs):
        fig.add_trace(go.Scatter(x=x, y=[e.get(f"val_{metric}") for e in epochs], name=f"validation {metric}",
                                 mode="lines+markers", line=dict(color=VAL_COLOUR)))
    fig.update_xaxes(title_text="epoch", dtick=1 if len(x) <= 20 else None)
    fig.update_yaxes(title_text=metric, tickformat=".1%" if metric == "accuracy" else None)
    return _layout(fig, f"Train vs validation {metric}", uirevision=metric)


def overlay_figure(series: dict[str, Sequence[dict]], metric: str = "val_accuracy"):
    """One line per run: `metric` per epoch, for comparing runs."""
    go = _go()
    fig = go.Figure()
    for name, epochs in series.items():
        fig.add_trace(go.Scatter(x=[e["epoch"] for e in epochs], y=[e.get(metric) for e in epochs],
                                 name=name, mode="lines+markers"))
    label = metric.replace("val_", "validation ").replace("_", " ")
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text=label, tickformat=".1%" if "accuracy" in metric else None)
    return _layout(fig, f"{label[0].upper()}{label[1:]} per epoch", height=380)


def confusion_figure(matrix: np.ndarray | list, normalise: bool = False):
    """Clickable confusion-matrix heatmap (rows true, columns predicted).

    Plotly heatmaps emit no selection events, so a transparent square marker sits on every cell;
    clicking a cell selects its marker, whose customdata is [true class, predicted class, count].
    """
    go = _go()
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    shown = counts / np.maximum(rows, 1) if normalise else counts
    text = [[(f"{v:.0%}" if normalise else f"{v:d}") for v in row] for row in shown]
    fig = go.Figure(go.Heatmap(z=shown, x=list(SHORT_NAMES), y=list(SHORT_NAMES), colorscale="Blues",
                               text=text, texttemplate="%{text}", hoverinfo="skip",
                               showscale=False, zmin=0))
    xs, ys, custom = [], [], []
    for t in range(len(counts)):
        for p in range(len(counts)):
            xs.append(SHORT_NAMES[p])
            ys.append(SHORT_NAMES[t])
            custom.append([t, p, int(counts[t, p])])
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="markers", customdata=custom, name="cells", showlegend=False,
        marker=dict(symbol="square", size=34, color="rgba(0,0,0,0.01)"),
        selected=dict(marker=dict(color="rgba(228,87,46,0.35)")),
        unselected=dict(marker=dict(opacity=1)),
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata[2]} images<extra>click to see them</extra>",
    ))
    fig.update_yaxes(autorange="reversed", title_text="true class")
    fig.update_xaxes(title_text="predicted class", side="bottom")
    fig.update_layout(clickmode="event+select", dragmode=False)
    return _layout(fig, "", height=520)


def probability_bars(probs: Iterable[float], highlight: int | None = None):
    """Horizontal bars for all 10 classes, the top class highlighted."""
    go = _go()
    probs = np.asarray(list(probs), dtype=float)
    top = int(probs.argmax()) if highlight is None else highlight
    colours = [VAL_COLOUR if i == top else "#9fb6cd" for i in range(len(probs))]
    fig = go.Figure(go.Bar(x=probs, y=list(CLASS_NAMES), orientation="h", marker_color=colours,
                           text=[f"{p:.1%}" for p in probs], textposition="outside", cliponaxis=False))
    fig.update_xaxes(range=[0, 1.15], tickformat=".0%", showgrid=False)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "", height=300)


def class_count_figure(counts: dict[str, list[int]]):
    """Grouped bars: items per class in every split."""
    go = _go()
    fig = go.Figure()
    for split, values in counts.items():
        fig.add_trace(go.Bar(x=list(SHORT_NAMES), y=values, name=f"{split} ({sum(values):,})"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="images per class")
    return _layout(fig, "", height=340)  # the page's subheader names it; a title would collide with the legend


def per_class_figure(per_class: Sequence[dict]):
    """Grouped bars of precision, recall and F1 per class."""
    go = _go()
    fig = go.Figure()
    names = [SHORT_NAMES[r["class"]] for r in per_class]
    for key in ("precision", "recall", "f1"):
        fig.add_trace(go.Bar(x=names, y=[r[key] for r in per_class], name=key))
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return _layout(fig, "Per-class precision, recall and F1", height=340)


# Plotly's D3 palette: ten colours told apart on a white background, one per class (the map, its legend)
CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")
BEFORE_COLOUR, AFTER_COLOUR = "#e4572e", "#1f77b4"


def reliability_figure(before: dict, after: dict | None = None, temperature: float | None = None):
    """Reliability diagram: for each confidence bin (calibration.reliability_diagram's dicts), how often
    the answers were right against how sure they were; the diagonal is perfect calibration. `before`
    the raw answers, `after` the same answers after temperature scaling; marker area grows with the
    bin's answers (hover for the count). Empty bins are left out."""
    go = _go()
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                               line=dict(color="#999999", dash="dash", width=1), hoverinfo="skip"))
    series = [("as answered", before, BEFORE_COLOUR)]
    if after is not None:
        series.append((f"after temperature scaling (T = {temperature:.3f})" if temperature else
                       "after temperature scaling", after, AFTER_COLOUR))
    most = max(1, max(int(np.max(np.asarray(d["count"]))) for _, d, _ in series))
    for name, d, colour in series:
        count = np.asarray(d["count"], dtype=np.int64)
        keep = count > 0
        conf = np.asarray(d["confidence"], dtype=float)[keep]
        acc = np.asarray(d["accuracy"], dtype=float)[keep]
        lower, upper = np.asarray(d["lower"])[keep], np.asarray(d["upper"])[keep]
        text = [f"sure {lo:.0%}-{hi:.0%}: {n:,} answers, {c:.1%} on average<br>right {a:.1%} of the time"
                for lo, hi, n, c, a in zip(lower, upper, count[keep], conf, acc)]
        fig.add_trace(go.Scatter(x=conf, y=acc, mode="lines+markers", name=name, text=text,
                                 hovertemplate="%{text}<extra></extra>", line=dict(color=colour, width=2),
                                 marker=dict(color=colour, size=6 + 22 * np.sqrt(count[keep] / most))))
    fig.update_xaxes(range=[0, 1.02], tickformat=".0%", title_text="how sure the model said it was (mean confidence)")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", title_text="how often it was right (accuracy)")
    return _layout(fig, "", height=460)


def feature_map_figure(coords: np.ndarray, labels: np.ndarray, predictions: np.ndarray, index: np.ndarray,
                       confidence: np.ndarray | None = None, classes: Iterable[int] | None = None,
                       mistakes_only: bool = False, placed: np.ndarray | None = None,
                       placed_names: Sequence[str] | None = None, height: int = 620):
    """The 2-D map of test items (WebGL scatter, one trace per true class so the legend filters them),
    mistakes marked with a black x on top, and optional new inputs (`placed`, (M, 2)) as stars. Every
    test point's customdata is [test index, true class, predicted class]: a click selects it.
    `classes` keeps the points whose true class is listed; `mistakes_only` keeps the mistakes."""
    go = _go()
    coords = np.asarray(coords, dtype=float)
    labels, predictions, index = (np.asarray(a, dtype=np.int64) for a in (labels, predictions, index))
    conf = None if confidence is None else np.asarray(confidence, dtype=float)
    wanted = set(range(len(CLASS_NAMES)) if classes is None else (int(c) for c in classes))
    wrong = predictions != labels
    keep = np.isin(labels, sorted(wanted)) & (wrong if mistakes_only else True)

    def points(mask: np.ndarray) -> dict:
        rows = np.flatnonzero(mask)
        text = [f"#{index[i]} {CLASS_NAMES[labels[i]]} → {CLASS_NAMES[predictions[i]]}"
                + (f" ({conf[i]:.0%})" if conf is not None else "") for i in rows]
        return dict(x=coords[rows, 0], y=coords[rows, 1], text=text,
                    customdata=np.stack([index[rows], labels[rows], predictions[rows]], axis=1),
                    hovertemplate="%{text}<extra>click to see it</extra>")

    fig = go.Figure()
    for c in range(len(CLASS_NAMES)):
        if c not in wanted:
            continue
        mask = keep & (labels == c)
        fig.add_trace(go.Scattergl(mode="markers", name=SHORT_NAMES[c], legendgroup=str(c), **points(mask),
                                   marker=dict(color=CLASS_COLOURS[c], size=5, opacity=0.75),
                                   selected=dict(marker=dict(size=14, opacity=1)),
                                   unselected=dict(marker=dict(opacity=0.35))))
    marked = keep & wrong
    fig.add_trace(go.Scattergl(mode="markers", name=f"mistakes ({int(marked.sum()):,})", **points(marked),
                               marker=dict(symbol="x", color="#111111", size=6, opacity=0.9),
                               selected=dict(marker=dict(size=14, opacity=1)),
                               unselected=dict(marker=dict(opacity=0.5))))
    if placed is not None and len(placed):
        placed = np.asarray(placed, dtype=float).reshape(-1, 2)
        names = list(placed_names) if placed_names is not None else [f"input {i + 1}" for i in range(len(placed))]
        fig.add_trace(go.Scatter(x=placed[:, 0], y=placed[:, 1], mode="markers+text", name="your input",
                                 text=names, textposition="top center", hovertemplate="%{text}<extra></extra>",
                                 marker=dict(symbol="star", size=18, color="#ffd400",
                                             line=dict(color="#111111", width=1.5))))
    # t-SNE's axes have no units: no ticks, one unit the same length both ways
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, title_text="")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, title_text="", scaleanchor="x")
    fig.update_layout(clickmode="event+select", plot_bgcolor="#fafafa")
    _layout(fig, "", height=height)
    # the legend (a class filter: click to hide, double-click to isolate) in a column on the right,
    # clear of Plotly's toolbar, which covers the top right corner
    fig.update_layout(legend=dict(orientation="v", yanchor="top", y=1, xanchor="left", x=1.01,
                                  title=dict(text="true class")),
                      margin=dict(l=10, r=10, t=36, b=10))
    return fig


def selected_customdata(event) -> list[list]:
    """The customdata rows of the points a Streamlit plotly selection event holds, as lists. Plotly
    sends customdata given as a NumPy array (a typed array) as {"0": a, "1": b, ...}, and given as
    lists as a list: both come back as [a, b, ...]. An event without points gives []."""
    try:
        points = event.selection.points if hasattr(event, "selection") else event["selection"]["points"]
    except (KeyError, TypeError, AttributeError):
        return []
    rows = []
    for point in points or []:
        custom = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(custom, dict):
            try:
                custom = [custom[k] for k in sorted(custom, key=int)]
            except ValueError:
                continue
        if isinstance(custom, (list, tuple)):
            rows.append(list(custom))
    return rows
