"""Prometheus metrics of the pod's own work, served by the API's /metrics (manager pods).

Defined in one place so a dashboard author finds every name here; the API's request metrics live
with the API.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ANALYZER_BATCH = Histogram(
    "taskherd_analyzer_batch_size", "Results analyzed together (one Redis read, one MySQL commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
ARCHIVED = Counter("taskherd_tasks_archived_total", "Tasks archived, by final state", ["state"])
