"""A map/reduce word count with a fan-in join: the README's second example.

    split    executor and analyzer: cut the text into chunks; one `count` child per chunk, and a
             join of type `reduce` over them
    count    executor: count the words of one chunk; analyzer: the counts are the chunk's record
    reduce   executor: the join task, given each child's id, state and record: sums the counts

Run it against a cluster (`taskherd up`, from any directory: this module ships with taskherd):

    python -m taskherd.demo.wordcount --url http://127.0.0.1:18080 README.md

It prints the total and the most common words, read from the join task's record.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from typing import Any

from taskherd.client import Client

HERE = "taskherd.demo.wordcount"
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def split(payload: dict[str, Any]) -> dict[str, Any]:
    """Executor of `split`: the text in chunks of `lines` lines."""
    lines = payload["text"].splitlines()
    n = int(payload.get("lines", 50))
    return {"chunks": ["\n".join(lines[i:i + n]) for i in range(0, len(lines), n)]}


def after_split(given: dict[str, Any]) -> dict[str, Any]:
    """Analyzer of `split`: a `count` child per chunk (map), and the join that reduces them."""
    chunks = given["result"]["chunks"]
    return {"children": [{"type": "count", "payload": {"text": c}} for c in chunks],
            "join": {"type": "reduce", "payload": {"top": given["task"]["payload"].get("top", 10)}},
            "record": {"chunks": len(chunks)}}


def count(payload: dict[str, Any]) -> dict[str, Any]:
    """Executor of `count`: the words of one chunk."""
    return {"counts": dict(Counter(words(payload["text"])))}


def after_count(given: dict[str, Any]) -> dict[str, Any]:
    """Analyzer of `count`: its counts are its record, which the join task receives."""
    return {"children": [], "record": given["result"]}


def reduce(payload: dict[str, Any]) -> dict[str, Any]:
    """Executor of the join task `reduce`: `children` holds each chunk's {id, state, record, error}."""
    total: Counter[str] = Counter()
    failed = []
    for child in payload["children"]:
        if child["state"] == "succeeded":
            total.update(child["record"]["counts"])
        else:
            failed.append(child["id"])
    return {"words": sum(total.values()), "distinct": len(total), "chunks": len(payload["children"]),
            "failed": failed, "top": total.most_common(int(payload.get("top", 10)))}


def register(th: Client) -> None:
    for task_type, executor, analyzer in (("split", "split", "after_split"), ("count", "count", "after_count"),
                                          ("reduce", "reduce", None)):
        th.add_executor(task_type, {"kind": "python", "target": f"{HERE}:{executor}", "timeout_s": 60})
        if analyzer:
            th.add_analyzer(task_type, {"kind": "python", "target": f"{HERE}:{analyzer}"})


def run(th: Client, text: str, job: str, lines: int = 50, top: int = 10, timeout: float = 300) -> dict[str, Any]:
    """Count the words of `text` as the job `job`; the join task's record (what `reduce` returned)."""
    register(th)
    th.submit({"id": f"{job}-split", "type": "split", "job": job,
               "payload": {"text": text, "lines": lines, "top": top}})
    th.wait(job, timeout=timeout)
    return dict(th.task(f"join-{job}-split")["record"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m taskherd.demo.wordcount",
                                 description="Count the words of a file on taskherd: map/reduce with a fan-in join.")
    ap.add_argument("file", help="a text file")
    ap.add_argument("--url", default="http://127.0.0.1:18080")
    ap.add_argument("--lines", type=int, default=50, help="lines per chunk (one count task each)")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args(argv)
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    with Client(args.url) as th:
        record = run(th, text, f"wordcount-{time.strftime('%Y%m%d-%H%M%S')}", args.lines, args.top)
    print(f"{record['words']} words ({record['distinct']} distinct) in {record['chunks']} chunks")
    for word, n in record["top"]:
        print(f"  {n:6d}  {word}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
