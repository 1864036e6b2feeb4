"""kill -9 at random moments and at every crash point: nothing answered Success or produced is lost,
nothing reaches the PACS twice (the campaign itself is in ``tests/crash.py``; ``bench/crash.py``
runs it for 100+ rounds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crash import KINDS, Campaign, summary

pytestmark = pytest.mark.e2e


def test_kill_9_at_random_moments_and_at_every_crash_point(
    tmp_path: Path, orthanc_factory: Any, demo_card: Path
) -> None:
    # SQLite in CI (the time budget); bench/crash.py --database-url runs it on PostgreSQL
    pacs = orthanc_factory(aet="PACS")
    campaign = Campaign(tmp_path, f"sqlite:///{tmp_path / 'index.db'}", pacs, seed=3)
    try:
        for kind in KINDS:
            print(campaign.run(kind))
    finally:
        campaign.node.kill()  # a failed round must not leave a node running
    figures = summary(campaign.rounds)
    print(figures)
    assert figures["rounds"] == len(KINDS)
    # the crash points landed where they should: e.g. nothing confirmed when storing kills
    by_kind = {r.kind: r for r in campaign.rounds}
    assert by_kind["stored-before-index"].acknowledged == 0
    # answered Success, no row committed: the restart indexed them from their receipts
    answered = by_kind["answered-before-index"]
    assert answered.acknowledged >= 1 and answered.phase.startswith("receiving (0 indexed"), (
        answered
    )
    assert by_kind["mid-dispatch"].phase == "delivery queued"
    assert by_kind["inference-done"].phase == "inference"
    assert by_kind["results-before-commit"].phase == "inference"
    assert by_kind["completion-before-commit"].phase == "received, not yet complete"
    # a delivery cut off half-way is sent again; the PACS check proved it replaced
    assert figures["redelivered"] >= 1


def test_the_bench_alternates_random_kills_with_each_crash_point() -> None:
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    plan = importlib.import_module("bench.crash").plan(12)
    assert plan[::2] == ["random"] * 6
    assert sorted(set(plan[1::2])) == sorted(KINDS[1:])
