"""How a slot sizes a type's batches from its last runs (`taskherd.actors.worker.batch_size`): by the
shortest of the last few, so one call that waited for a core does not change the slot's RDY (each
change is a command on every topic's connection), and a type that turned long stops batching."""

from __future__ import annotations

from collections import deque

from taskherd.actors.leases import BATCH_MOST
from taskherd.actors.worker import BATCH_SPAN_S, RUNS_KEPT, batch_size


def runs(*durations: float) -> deque[float]:
    kept: deque[float] = deque(maxlen=RUNS_KEPT)
    kept.extend(durations)
    return kept


def test_short_runs_fill_a_batch_and_a_10_ms_type_gets_what_fits_the_span() -> None:
    assert batch_size(runs(0.0003)) == BATCH_MOST
    assert batch_size(runs(0.0102, 0.0101)) == int(BATCH_SPAN_S / 0.0101) == 4


def test_one_slow_call_among_short_ones_leaves_the_size_as_it_was() -> None:
    # a no-op that waited 20 ms for a core, or a new child's start-up before its first call
    assert batch_size(runs(0.0004, 0.020, 0.0003)) == BATCH_MOST
    assert batch_size(runs(0.300, 0.0004)) == BATCH_MOST


def test_a_type_whose_last_runs_were_all_long_is_not_batched() -> None:
    assert batch_size(runs(0.0003, *[6.0] * RUNS_KEPT)) == 1
    assert batch_size(runs(0.0003, *[6.0] * (RUNS_KEPT - 1))) == BATCH_MOST
