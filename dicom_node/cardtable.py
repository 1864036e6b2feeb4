"""Markdown tables of what model cards say about their models' performance.

The README's metric tables are printed by ``dicom-node models table`` from
the cards themselves (read through :mod:`pipelines.card`, the service's view of a model) (their ``performance`` entries), never typed by hand:
a table can then only say what a build measured. One row per label, unit and
split; one column per metric, each ``value [ci_low, ci_high]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.card import METRIC_TITLES, Estimate, ModelCard


def _cell(estimate: Estimate | None) -> str:
    if estimate is None:
        return ""
    if estimate.value is None:
        return "n/a"
    if estimate.ci_low is None or estimate.ci_high is None:
        return f"{estimate.value:.2f}"
    return f"{estimate.value:.2f} [{estimate.ci_low:.2f}, {estimate.ci_high:.2f}]"


def performance_table(card: ModelCard, *, splits: Sequence[str] = ("held_out_test",)) -> str:
    """The card's ``performance`` on ``splits`` as a Markdown table (empty string: none)."""
    entries = [p for p in card.performance if p.split in splits]
    if not entries:
        return ""
    names = list(dict.fromkeys(name for p in entries for name in p.metrics))
    header = ["label", "unit", "split", "n", "n+", *(METRIC_TITLES[n] for n in names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in entries:
        row = [
            p.label,
            p.unit,
            p.split.replace("_", " "),
            str(p.n),
            "" if p.n_positive is None else str(p.n_positive),
            *(_cell(p.metrics.get(n)) for n in names),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def cards_tables(cards: Sequence[ModelCard], *, splits: Sequence[str] = ("held_out_test",)) -> str:
    """One titled table per card, as the README shows them."""
    parts = []
    for card in cards:
        table = performance_table(card, splits=splits)
        confidence = {f"{p.confidence:.0%}" for p in card.performance}
        methods = {p.ci_method for p in card.performance if p.ci_method}
        parts.append(
            f"**{card.name} {card.version}** ({', '.join(sorted(confidence)) or '95%'} intervals"
            + (f"; {'; '.join(sorted(methods))}" if methods else "")
            + ")\n\n"
            + (table or "_no performance entries in the card_")
        )
    return "\n\n".join(parts) + "\n"
