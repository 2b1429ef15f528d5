"""Executors and analyzers for tests/e2e/test_result_bounds.py (imported by the pods' runner children)."""

from __future__ import annotations


def sized(payload: dict) -> dict:
    """A result whose compact JSON encoding is exactly `payload["bytes"]` bytes long."""
    return {"blob": "x" * (int(payload["bytes"]) - len('{"blob":""}'))}


def sized_record(given: dict) -> dict:
    """Analyzer: a record of `record_bytes` (compact JSON), inside an output 11 bytes longer."""
    n = int(given["task"]["payload"]["record_bytes"])
    return {"children": [], "record": {"blob": "x" * (n - len('{"blob":""}'))}}
