"""``dicom-node evaluate ich``: measure a trained ICH model on RSNA-format data.

The model is run exactly as the node runs it (the card's preprocessing,
TTA and thresholds) on every labelled slice it can find, and two levels are
reported:

* per slice, the metrics of the RSNA task: per-label precision, recall, F1
  and ROC AUC, and the weighted multi-label log loss (``any`` 2, others 1),
  each with a percentile-bootstrap 95 % interval over slices;
* per study, the unit the node reports in (:func:`study_report`): each
  study's probability aggregated from its slices with the card's rule,
  decided at the card's threshold, a study positive for a label when any of
  its slices is; sensitivity, specificity, PPV, F1 and ROC AUC with a 95 %
  interval from a bootstrap over patients.

Results are printed, saved as ``metrics.json`` and drawn as ``roc.png`` in the
output folder.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.card import CardError, LabelPerformance, LabelSpec, load_card
from pipelines.common.aggregate import aggregate
from pipelines.common.metrics import (
    binary_report,
    labels_performance,
    model_identity,
    multilabel_report,
    roc_curve,
    write_metrics,
)
from pipelines.common.models import load_weights
from pipelines.common.plots import save_roc_png
from pipelines.common.train import resolve_device
from pipelines.ich.data import LabelledSlice, SliceDataset, index_folder, read_labels
from pipelines.ich.labels import LABELS, LOSS_WEIGHTS
from pipelines.ich.pipeline import (
    IchOptions,
    TTASpec,
    air_fill,
    build_model,
    parse_options,
    score_dataset,
)

logger = logging.getLogger(__name__)


def study_report(
    slices: Sequence[LabelledSlice],
    y_true: np.ndarray,
    y_prob: np.ndarray,
    labels: Sequence[LabelSpec],
    options: IchOptions,
    **bootstrap: int,
) -> dict[str, Any]:
    """Per-study metrics, as the node decides: slices aggregated per study, the card's thresholds.

    ``y_true`` and ``y_prob`` have one column per entry of ``labels`` (the
    card's, with their thresholds); ``options`` give the aggregation rule. A
    study is positive for a label when any of its slices is. Intervals come
    from a bootstrap over patients (a patient's studies resampled together);
    ``bootstrap`` is ``n_bootstrap`` and ``seed`` of :func:`binary_report`.

    Returns
    -------
    dict
        ``{"unit": "study", "n", "patients", "aggregation", "per_label": {label:
        binary_report}}``.
    """
    rows: dict[str, list[int]] = {}
    for i, item in enumerate(slices):
        rows.setdefault(item.study_instance_uid, []).append(i)
    studies = list(rows.values())
    truth = np.array([y_true[idx].max(axis=0) for idx in studies])
    how, k = options.aggregation, options.aggregation_k
    prob = np.array([aggregate(y_prob[idx], how, k) for idx in studies])
    patients = [slices[idx[0]].group for idx in studies]
    per_label = {
        label.name: binary_report(
            truth[:, j], prob[:, j], label.threshold, groups=patients, **bootstrap
        )
        for j, label in enumerate(labels)
    }
    return {
        "unit": "study",
        "n": len(studies),
        "patients": len(set(patients)),
        "aggregation": f"{how} (k={k})" if how == "top_k_mean" else how,
        "per_label": per_label,
    }


def study_performance(report: dict[str, Any], split: str) -> list[LabelPerformance]:
    """The card's headline entries of a :func:`study_report`: per study, each label."""
    return labels_performance(report, unit="study", split=split)


def evaluate_ich(
    model_dir: str | Path,
    dicom_dir: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    tta: bool = True,
) -> dict[str, Any]:
    """Evaluate the model in ``model_dir`` (its ``card.yaml``); write metrics.json and roc.png.

    ``tta`` scores with the card's test-time augmentation (as the node
    does); False scores the identity view only.

    Returns
    -------
    dict
        The metrics as written to ``metrics.json``.

    Raises
    ------
    CardError
        If the card is not an ``ich`` card or its labels are not the six RSNA labels.
    pipelines.ich.data.DataError
        If the data cannot be read.
    """
    card_path = Path(model_dir) / "card.yaml" if Path(model_dir).is_dir() else Path(model_dir)
    card = load_card(card_path)
    if card.pipeline != "ich":
        raise CardError(f"{card_path} is a {card.pipeline!r} model, not an ich model")
    names = [label.name for label in card.labels]
    if sorted(names) != sorted(LABELS):
        raise CardError(
            f"{card_path} has labels {names}; RSNA evaluation needs exactly {', '.join(LABELS)}"
        )
    options = parse_options(card)
    model = build_model(card, options)
    load_weights(model, card)
    run_device = resolve_device(device)

    slices = index_folder(dicom_dir, read_labels(labels_csv))
    # the card's label order may differ from the CSV's: reorder the targets to the model's
    order = [LABELS.index(n) for n in names]
    dataset = SliceDataset(slices, card.input)
    y_true = dataset.targets()[:, order]
    y_prob = score_dataset(
        model,
        dataset,
        batch_size=batch_size or options.batch_size,
        device=run_device,
        tta=options.tta if tta else TTASpec(),
        fill=air_fill(card.input.mean, card.input.std),
    )
    report = multilabel_report(
        y_true,
        y_prob,
        names,
        [label.threshold for label in card.labels],
        [LOSS_WEIGHTS[n] for n in names],
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    report.update(
        {
            "model": model_identity(card),
            "unit": "slice",
            "patients": len({s.group for s in slices}),
            "tta_views": options.tta.views if tta else 1,
            "device": str(run_device),
            "study": study_report(
                slices, y_true, y_prob, card.labels, options, n_bootstrap=n_bootstrap, seed=seed
            ),
        }
    )
    out = write_metrics(Path(out_dir), report, card).parent
    curves = {}
    for k, name in enumerate(names):
        fpr, tpr, _ = roc_curve(y_true[:, k], y_prob[:, k])
        curves[name] = (fpr, tpr, report["per_label"][name]["roc_auc"]["value"])
    save_roc_png(
        curves, out / "roc.png", title=f"{card.name}: ROC per label ({len(y_true)} slices)"
    )
    return report


def format_report(report: dict[str, Any]) -> str:
    """A fixed-width table of the report for the terminal."""

    def cell(metric: dict[str, Any]) -> str:
        v, lo, hi = metric["value"], metric["ci_low"], metric["ci_high"]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return f"{'n/a':>21}"
        return f"{v:6.3f} [{lo:5.3f}, {hi:5.3f}]"

    title = f"{report['model']['name']}: {report['n']} slices, {report['patients']} patients"
    header = f"{'label':<18}{'n+':>6}{'thr':>7}  " + "  ".join(
        f"{h:<21}" for h in ("precision", "recall", "F1", "ROC AUC")
    )
    lines = [f"{title}, 95 % bootstrap intervals", header]
    for label, m in report["per_label"].items():
        lines.append(
            f"{label:<18}{m['n_positive']:>6}{m['threshold']:>7.3f}  {cell(m['precision'])}  "
            f"{cell(m['recall'])}  {cell(m['f1'])}  {cell(m['roc_auc'])}"
        )
    lines.append(
        f"weighted log loss (any 2, others 1): {cell(report['weighted_log_loss']).strip()}"
    )
    study = report.get("study")
    if study:
        lines.append(
            f"per study ({study['n']} studies, {study['patients']} patients, "
            f"{study['aggregation']} of slices), 95 % bootstrap over patients"
        )
        lines.append(
            f"{'label':<18}{'n+':>6}{'thr':>7}  "
            + "  ".join(f"{h:<21}" for h in ("sensitivity", "specificity", "PPV", "ROC AUC"))
        )
        for label, m in study["per_label"].items():
            lines.append(
                f"{label:<18}{m['n_positive']:>6}{m['threshold']:>7.3f}  {cell(m['recall'])}  "
                f"{cell(m['specificity'])}  {cell(m['precision'])}  {cell(m['roc_auc'])}"
            )
    return "\n".join(lines)
