"""The kill -9 campaign for figures: 100+ rounds of killing the node and checking nothing was lost.

Each round (see ``tests/crash.py``) sends a three-image study to the node,
kills it with SIGKILL -- at a random moment, or at one of the crash points
of :mod:`dicom_node.faults` -- checks that every instance answered Success
is in the spool and the index, restarts it, lets it finish, and checks that
the PACS (a real Orthanc) holds every result of every study exactly once.
Half of the rounds kill at random, the other half cycle through the crash
points. Any broken invariant stops the run with the round's details.

Run: ``.venv/bin/python -m bench.crash [--rounds 100] [--database-url URL] [--ray]``
(``--ray``: the models run on a Ray cluster of two nodes started here)
(``--smoke``: one random round and one crash point, for CI).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench.ray_cluster import RayCluster  # noqa: E402

from crash import KINDS, Campaign, CampaignError, summary  # noqa: E402
from node import DEMO_CARD  # noqa: E402
from peers import Orthanc  # noqa: E402


def plan(rounds: int) -> list[str]:
    """Alternate random kills with the crash points in turn."""
    points = list(KINDS[1:])
    return ["random" if i % 2 == 0 else points[(i // 2) % len(points)] for i in range(rounds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument(
        "--database-url", help="the node's index (default: SQLite in a temp folder)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="two rounds")
    parser.add_argument(
        "--ray", action="store_true", help="models on a Ray cluster started here (engine: ray)"
    )
    args = parser.parse_args(argv)
    if not DEMO_CARD.exists():
        print(f"build the demo model first: dicom-node models build-demo ({DEMO_CARD})")
        return 2
    rounds = 2 if args.smoke else args.rounds
    with tempfile.TemporaryDirectory(prefix="crash-bench-") as tmp:
        work = Path(tmp)
        url = args.database_url or f"sqlite:///{work / 'index.db'}"
        pacs = Orthanc(work / "pacs", aet="PACS").start()
        cluster = RayCluster(work).start() if args.ray else None
        engine = None
        if cluster is not None:
            cluster.add_worker({"bench_host": 2})
            engine = {
                "kind": "ray",
                "address": cluster.address,
                "token_file": str(cluster.token_file),
                "ray": {"num_cpus": 1, "resources": {"bench_host": 1}},
            }
        campaign = Campaign(work, url, pacs, seed=args.seed, engine=engine)
        try:
            for kind in plan(rounds):
                done = campaign.run(kind)
                print(
                    f"round {done.number:3d} {done.kind:24s} died after {done.died_after:5.2f} s "
                    f"({done.phase}); {done.acknowledged} confirmed; {done.seconds:.0f} s",
                    flush=True,
                )
        except CampaignError as exc:
            print(f"FAILED: {exc}")
            return 1
        except (TimeoutError, RuntimeError) as exc:  # the node would not start: not a lost object
            print(f"ABORTED after {len(campaign.rounds)} rounds: {exc}")
            return 2
        finally:
            campaign.node.kill()
            pacs.kill()
            if cluster is not None:
                cluster.stop()
    figures = summary(campaign.rounds)
    print(json.dumps(figures, indent=2))
    print(
        f"{figures['rounds']} kills survived: every confirmed instance stored and indexed, every "
        "study analysed, every result in the PACS exactly once"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
