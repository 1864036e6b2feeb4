"""Figures for model cards, drawn headless and thread-safe.

Uses matplotlib's object API with the Agg canvas (:class:`~matplotlib.figure.Figure`
+ :class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`) and never imports
``matplotlib.pyplot``: no global backend switch, no figure manager, no
display needed, and figures drawn in different threads share no state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

RocCurve = tuple[np.ndarray, np.ndarray, float]
"""``(fpr, tpr, auc)`` of one label, e.g. from :func:`pipelines.common.metrics.roc_curve`
and :func:`pipelines.common.metrics.roc_auc`."""

DPI = 150


def roc_figure(curves: Mapping[str, RocCurve], *, title: str) -> Figure:
    """ROC curves of several labels on one square axes, with the chance diagonal.

    Each label is a line labelled ``"<label> (AUC 0.93)"`` in the legend. A
    label whose AUC is ``nan`` (only one class among its cases, so no curve
    exists) draws no line and appears in the legend as ``"<label> (AUC n/a)"``.
    """
    fig = Figure(figsize=(5.0, 5.0), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="0.6", linewidth=1.0, label="chance")
    for label, (fpr, tpr, auc) in curves.items():
        if math.isnan(auc):
            ax.plot([], [], label=f"{label} (AUC n/a)")
            continue
        fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
        if fpr.shape != tpr.shape or fpr.ndim != 1:
            raise ValueError(f"{label}: fpr and tpr must be 1-D of equal length")
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{label} (AUC {auc:.2f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title)
    ax.grid(True, linewidth=0.5, alpha=0.4)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def save_roc_png(curves: Mapping[str, RocCurve], path: str | Path, *, title: str) -> Path:
    """Write :func:`roc_figure` as a 150 dpi PNG, creating missing parent folders.

    Parameters
    ----------
    curves : mapping
        ``{label: (fpr, tpr, auc)}``, drawn in mapping order.
    path : str or Path
        Destination file; written as PNG whatever its suffix.
    title : str
        Title above the axes.

    Returns
    -------
    Path
        ``path``.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    roc_figure(curves, title=title).savefig(out, dpi=DPI, format="png")
    return out
