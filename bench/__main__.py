"""``python -m bench --smoke``: smoke-run the benchmark every study declares, so none can rot.

Each study's ``STUDY.bench`` module (:mod:`pipelines.study`) runs as
``python -m MODULE --smoke`` in its own process, one after another; the exit
status is 1 when any of them failed, and the failed ones are named.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from pipelines.study import studies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", required=True, help="tiny runs only")
    parser.parse_args(argv)
    failed = []
    for study in studies():
        if not study.bench:
            continue
        print(f"== bench smoke: python -m {study.bench} --smoke", flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", study.bench, "--smoke"], check=False)
        print(f"== {study.bench}: exit {done.returncode} in {time.perf_counter() - start:.0f}s")
        if done.returncode != 0:
            failed.append(study.bench)
    if failed:
        print(f"bench smoke failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
