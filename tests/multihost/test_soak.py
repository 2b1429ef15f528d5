"""The nemesis soak, 3 minutes of it (SOAK_S to change; `make soak` runs 30): on 5 hosts a steady
producer and job trees run while a seeded nemesis injects faults at random (tests/multihost/soak.py);
then the whole history is checked. Its figures go to the session's figures and to soak_runs.md."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hosts import Cluster
from tests.multihost import nemesis, soak


@pytest.fixture(scope="module")
def cluster(root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("hosts"), managers=2, workers=2, overrides=nemesis.OVERRIDES,
                 redis_cluster=nemesis.REDIS_CLUSTER) as c:
        yield c


def test_nemesis_soak_loses_and_doubles_nothing(cluster: Cluster, figures: dict, tmp_path: Path) -> None:
    seconds = float(os.environ.get("SOAK_S", "180"))
    seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1, 10**6))

    fig = soak.soak(cluster, seconds, seed, tmp_path)

    print(soak.record(fig, "make test"))
    figures.update({k: v for k, v in fig.items() if not k.startswith("_")})
    # Lost, unexpected, double-final, unfinished: never. An overlap not explained by a paused host is
    # counted, recorded in soak_runs.md and printed for a look (the LeaseKeeper crash that made them is
    # fixed: 6b16f61), not failed on: two executions at once are a cost, not a double result (fencing
    # keeps one), and one such case of a 7-minute soak (an exe started 1.2 s after its lease was
    # requeued) is still to be explained.
    hard = [p for p in soak.problems(fig) if not p.startswith("overlaps_unexplained")]
    # A string message, not a tuple: pytest shortens a tuple's repr and the details are the point.
    assert not hard, f"{hard}: {json.dumps(fig['_details'], indent=1)}"
    if fig["overlaps_unexplained"]:
        print(f"WARNING: {fig['overlaps_unexplained']} unexplained overlap(s): {fig['_details']}")
