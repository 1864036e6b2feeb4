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
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.typing import LegendLocType

RocCurve = tuple[np.ndarray, np.ndarray, float]
"""``(fpr, tpr, auc)`` of one label, e.g. from :func:`pipelines.common.metrics.roc_curve`
and :func:`pipelines.common.metrics.roc_auc`."""

PrCurve = tuple[np.ndarray, np.ndarray, float]
"""``(recall, precision, ap)`` of one class, e.g. from
:func:`pipelines.common.detection_metrics.precision_recall_curves` and the ``ap50``
of :func:`pipelines.common.detection_metrics.per_class_ap50`."""

DPI = 150


def _square_axes() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(5.0, 5.0), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _draw_curves(
    ax: Axes,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    *,
    metric: str,
    axes_names: tuple[str, str],
    drawstyle: str = "default",
) -> None:
    """One line per label, ``"<label> (<metric> 0.93)"`` in the legend.

    A label whose summary value is ``nan`` (no curve exists) draws no line and
    appears in the legend as ``"<label> (<metric> n/a)"``.
    """
    for label, (x, y, value) in curves.items():
        if math.isnan(value):
            ax.plot([], [], label=f"{label} ({metric} n/a)")
            continue
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"{label}: {' and '.join(axes_names)} must be 1-D of equal length")
        ax.plot(x, y, linewidth=1.5, drawstyle=drawstyle, label=f"{label} ({metric} {value:.2f})")


def _finish_unit_square(
    fig: Figure, ax: Axes, *, xlabel: str, ylabel: str, title: str, legend_loc: LegendLocType
) -> Figure:
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, linewidth=0.5, alpha=0.4)
    ax.legend(loc=legend_loc, fontsize="small")
    fig.tight_layout()
    return fig


def _save_png(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png")
    return out


def roc_figure(curves: Mapping[str, RocCurve], *, title: str) -> Figure:
    """ROC curves of several labels on one square axes, with the chance diagonal.

    Each label is a line labelled ``"<label> (AUC 0.93)"`` in the legend. A
    label whose AUC is ``nan`` (only one class among its cases, so no curve
    exists) draws no line and appears in the legend as ``"<label> (AUC n/a)"``.
    """
    fig, ax = _square_axes()
    ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="0.6", linewidth=1.0, label="chance")
    _draw_curves(ax, curves, metric="AUC", axes_names=("fpr", "tpr"))
    return _finish_unit_square(
        fig,
        ax,
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate (sensitivity)",
        title=title,
        legend_loc="lower right",
    )


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
    return _save_png(roc_figure(curves, title=title), path)


def pr_figure(curves: Mapping[str, PrCurve], *, title: str) -> Figure:
    """Precision-recall curves of several classes on one square axes.

    Each class is a step line (precision at recall ``r`` is that of the first
    point with recall >= ``r``, COCO's interpolation) labelled
    ``"<class> (AP50 0.41)"`` in the legend; ``"<class> (AP50 n/a)"`` and no
    line when the AP is ``nan`` (no ground-truth box of the class). No chance
    line: a detector's chance precision depends on how many boxes it proposes.
    """
    fig, ax = _square_axes()
    _draw_curves(
        ax, curves, metric="AP50", axes_names=("recall", "precision"), drawstyle="steps-pre"
    )
    return _finish_unit_square(
        fig,
        ax,
        xlabel="Recall (fraction of ground-truth boxes found)",
        ylabel="Precision (fraction of detections that are right)",
        title=title,
        legend_loc="lower left",
    )


def save_pr_png(curves: Mapping[str, PrCurve], path: str | Path, *, title: str) -> Path:
    """Write :func:`pr_figure` as a 150 dpi PNG, creating missing parent folders.

    Parameters
    ----------
    curves : mapping
        ``{class: (recall, precision, ap50)}``, drawn in mapping order, e.g.
        ``{name: (*pr[name], aps[name].ap50) for name in pr}`` with ``pr`` from
        :func:`~pipelines.common.detection_metrics.precision_recall_curves` and
        ``aps`` from :func:`~pipelines.common.detection_metrics.per_class_ap50`.
    path : str or Path
        Destination file; written as PNG whatever its suffix.
    title : str
        Title above the axes.

    Returns
    -------
    Path
        ``path``.
    """
    return _save_png(pr_figure(curves, title=title), path)
