"""The suite's table: one row of figures per case, printed at the end and written to last_run.md."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from tests.faults.history import Figures
from tests.helpers import redis_cluster_wanted

ROWS: list[Figures] = []
LAST_RUN = Path(__file__).with_name("last_run_cluster.md" if redis_cluster_wanted() else "last_run.md")
"""The cluster pass of `make test` (TASKHERD_TEST_REDIS=cluster) keeps its table beside the one instance's."""

HEADER = ("case", "N", "lost", "unexp", "double", "execs tot/max", "calls tot/max", "overlap", "fenced",
          "outage s", "recovery s", "affected n / s", "done s", "wall s", "result", "notes")

LEGEND = """\
- **lost**: accepted ids never archived; **unexp**: archived ids never accepted; **double**: ids with a
  second archive row or record, more than one execution recorded `ok`, or counted out of the job twice.
- **execs**: execution records per task in MySQL (`tasks.executions`: finished attempts, and leases the
  TimeoutWatcher found expired); **calls**: executor calls per task from the executor-side log (every
  start, including killed and fenced ones). Total over the job / max for one task.
- **overlap**: calls that began while another execution of the same task was alive (an exclusive
  `flock` per task held for the call; the kernel drops it when the process dies), plus completed calls
  whose intervals intersect.
- **fenced**: late results discarded because their execution had been superseded (job meta `fenced`).
- **outage**: fault start to heal (0 for a kill with nothing to restart); **recovery**: fault start to the
  first task archived after the heal; **affected**: healthy tasks that ran more than once, and fault start
  to the last of them finishing; **done**: fault start to the job done; **wall**: the whole case.
"""


def _cell(x: object) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.1f}"
    return str(x)


def row(f: Figures) -> list[str]:
    notes = "; ".join(f.notes)
    if not f.measured:
        return [f.case, str(f.n), *["-"] * 12, f.outcome, notes]
    affected = f"{f.affected} / {_cell(f.affected_s)}" if f.affected else "0"
    return [f.case, str(f.n), str(f.lost), str(f.unexpected), str(f.double), f"{f.execs_total}/{f.execs_max}",
            f"{f.calls_total}/{f.calls_max}", str(f.overlaps), str(f.fenced), _cell(f.outage_s), _cell(f.recovery_s),
            affected, _cell(f.done_s), _cell(f.wall_s), f.outcome, notes]


def markdown(rows: list[Figures]) -> str:
    """The table, in case order (cases are numbered; pytest runs them file by file)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row(f)) + " |" for f in sorted(rows, key=lambda f: f.case)]
    return "\n".join(lines) + "\n"


def write(rows: list[Figures], session_s: float) -> Path:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    text = (f"# Fault suite: last run\n\n{stamp}, {platform.node()}, {len(rows)} case(s), "
            f"{session_s:.0f} s for the session (`pytest tests/faults`).\n\n{markdown(rows)}\n{LEGEND}")
    LAST_RUN.write_text(text)
    return LAST_RUN
