"""The results table: taskherd's figure, each peer's, and the ratio taskherd / peer (medians).

A cell is `median (min-max)` over the repetitions. A capped wait that never ended is a lower bound:
`> 60` when no repetition ended, and the ratio then bounds taskherd's side (`< 0.12`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from bench.common import ROOT

PEERS = ("celery", "dramatiq", "rq")

# (label, workload, figure, peer figure or None when the peers have no such thing, how to print)
ROWS: list[tuple[str, str, str, str | None, str]] = [
    ("no-op: submit rate (tasks/s, higher better)", "noop", "submit_rate", "submit_rate", "int"),
    ("no-op: drain rate (tasks/s, higher better)", "noop", "drain_rate", "drain_rate", "int"),
    ("no-op: Redis bytes kept per finished task", "noop", "retained_bytes_per_task", "retained_bytes_per_task", "int"),
    ("latency p50 submit->result (ms)", "latency", "result_p50", "result_p50", "ms"),
    ("latency p99 submit->result (ms)", "latency", "result_p99", "result_p99", "ms"),
    ("latency p50 submit->archived (ms)", "latency", "archived_p50", None, "ms"),
    ("latency p99 submit->archived (ms)", "latency", "archived_p99", None, "ms"),
    ("latency p50 submit->client holds result (ms)", "latency", "held_p50", "result_p50", "ms"),
    ("latency p99 submit->client holds result (ms)", "latency", "held_p99", "result_p99", "ms"),
    ("latency p50 submit->client sees done (ms)", "latency", "seen_p50", "result_p50", "ms"),
    ("latency p99 submit->client sees done (ms)", "latency", "seen_p99", "result_p99", "ms"),
    ("10 ms tasks: rate (tasks/s)", "sleep10", "drain_rate", "drain_rate", "int"),
    ("10 ms tasks: fraction of ideal (slots x 100/s)", "sleep10", "of_ideal", "of_ideal", "pct"),
    ("fan-out: tasks/s until job done", "fanout", "rate", "rate", "int"),
    ("fan-out: time to job done (s)", "fanout", "time_to_done", "time_to_done", "s"),
    ("scale: Redis bytes per live (queued) task", "scale", "bytes_per_live_task", "bytes_per_live_task", "int"),
    ("scale: bytes per live task while running", "scale", "bytes_per_live_task_running", None, "int"),
    ("scale: Redis after archive (bytes over baseline)", "scale", "after_archive_bytes", None, "int"),
    ("scale: Redis after teardown (bytes over baseline)", "scale", "after_teardown_bytes", None, "int"),
    ("scale: Redis dataset after archive (bytes over baseline)", "scale", "after_archive_dataset_bytes", None, "int"),
    ("scale: Redis dataset after teardown (bytes over baseline)", "scale", "after_teardown_dataset_bytes", None, "int"),
    ("recovery: SIGKILL of a worker -> task runs again (s)", "recovery", "time_to_rerun", "time_to_rerun", "s"),
]


def _num(v: float, how: str) -> str:
    if how == "int":
        return f"{v:,.0f}"
    if how == "pct":
        return f"{v * 100:.0f}%"
    if how == "ms":
        return f"{v:.1f}"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def cell(fig: dict[str, Any] | None, how: str, cap: float | None = None) -> str:
    if not fig:
        return "-"
    values = fig.get("values", [])
    capped = sum(1 for v in values if v is None)
    if "median" not in fig:
        return f"> {cap:g}" if capped and cap else "-"
    text = _num(fig["median"], how)
    if len(values) - capped > 1 and fig["min"] != fig["max"]:
        text += f" ({_num(fig['min'], how)}-{_num(fig['max'], how)})"
    if capped:
        text += f" [{capped}/{len(values)} > {cap:g}]"
    return text


def ratio(th: dict[str, Any] | None, peer: dict[str, Any] | None, cap: float | None) -> str:
    if not th or not peer or "median" not in th:
        return ""
    a = th["median"]
    if "median" not in peer:
        return f"< {a / cap:.2f}" if cap and peer.get("values") and a >= 0 else ""
    b = peer["median"]
    if b == 0 or math.isnan(b) or a < 0 or b < 0:
        return ""
    return f"{a / b:.2f}"


def layouts(res: dict[str, Any], system: str) -> list[str]:
    """Every layout `system` ran in ("dramatiq", "dramatiq best", "dramatiq best no-AOF")."""
    return sorted((k for k in res if k == system or k.startswith(system + " ")), key=lambda k: (k != system, k))


def rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """The ratio columns set taskherd's equal layout against each peer layout; `headline` its best."""
    res = report.get("results", {})
    th = res.get("taskherd", {})
    ths = layouts(res, "taskherd")
    peers = [k for p in PEERS for k in layouts(res, p)]
    header = ["figure", *ths] + peers + [f"th/{p}" for p in peers]
    out: list[list[str]] = []
    for label, w, key, peer_key, how in ROWS:
        t = th.get(w, {}).get(key)
        cap = th.get(w, {}).get("cap_s")
        if not any(res[x].get(w, {}).get(key) for x in ths) and (
                peer_key is None or not any(res[p].get(w, {}).get(peer_key) for p in peers)):
            continue
        line = [label, *[cell(res[x].get(w, {}).get(key), how, cap) for x in ths]]
        ratios = []
        for p in peers:
            pw = res[p].get(w, {})
            pf = pw.get(peer_key) if peer_key else None
            pcap = pw.get("cap_s")
            if peer_key is None:
                line.append("n/a" if pw else "-")
                ratios.append("")
                continue
            line.append(cell(pf, how, pcap))
            same_size = w != "fanout" or key != "time_to_done" or pw.get("tasks") == th.get(w, {}).get("tasks")
            ratios.append(ratio(t, pf, pcap) if same_size else "")
        out.append(line + ratios)
    return header, out, notes(report)


def notes(report: dict[str, Any]) -> list[str]:
    res = report.get("results", {})
    th = res.get("taskherd", {})
    n: list[str] = []
    if "noop" in th:
        n.append(f"no-op: N = {th['noop'].get('tasks')} for taskherd" + "".join(
            f"; {p} {res[p]['noop'].get('tasks')}" for p in PEERS if p in res and "noop" in res[p]
            and res[p]["noop"].get("tasks") != th["noop"].get("tasks")) + ". Drain = first lease (start) -> last "
            "archive (taskherd) / last result seen by the driver (peers).")
    if "latency" in th:
        n.append("latency: taskherd's submit->result is the server's result timestamp; the peers' is the client "
                 "holding the result (their blocking get), as taskherd's 'client holds result' (Client.run, submit and "
                 "wait in one request); 'client sees done' is the long-poll on the job answering done, after the archive.")
    if "fanout" in th or any("fanout" in res.get(p, {}) for p in PEERS):
        sizes = [f"{s} {res[s]['fanout'].get('tasks')} tasks" for s in ("taskherd", *PEERS)
                 if s in res and "fanout" in res[s]]
        n.append("fan-out: " + ", ".join(sizes) + ". The peers have no job completion: emulated (each task "
                 "INCRs a counter; done when it reaches the tree size, known in advance).")
    if "scale" in th:
        s = th["scale"]
        peer_n = [f"{p} {res[p]['scale'].get('tasks')}" for p in PEERS if p in res and "scale" in res[p]]
        n.append(f"scale: taskherd {s.get('tasks')} tasks queued with its worker pods stopped"
                 + (f"; peers {', '.join(peer_n)} queued with no worker" if peer_n else "")
                 + f". Job keys after teardown: {s.get('job_keys_after_teardown')}.")
    if "recovery" in th or any("recovery" in res.get(p, {}) for p in PEERS):
        n.append("recovery: the whole worker (pod / worker process with its children) holding the task is "
                 "SIGKILLed and restarted at once; the peers run with their default settings.")
    n += headline(report)
    load = report.get("load", {})
    if load:
        n.append(f"load average at start {tuple(round(x, 2) for x in load.get('start', ()))}, "
                 f"at end {tuple(round(x, 2) for x in load.get('end', ()))}.")
    return n


def headline(report: dict[str, Any]) -> list[str]:
    """taskherd's no-op drain at its fastest layout in this run against each peer at its fastest; and,
    when it ran on the peers' persistence too (a layout named `everysec`), that one against each peer at
    its fastest with AOF on."""
    res = report.get("results", {})
    peer_layouts = report.get("configuration", {}).get("peer_layouts", {})
    out = []
    if peer_layouts:
        out.append("layouts: " + str(report.get("configuration", {}).get("taskherd_layout", "")) + "; "
                   + "; ".join(f"{k}: {v}" for k, v in peer_layouts.items() if v) + ".")
    durable = _fastest(res, "taskherd", lambda k: "everysec" not in k)
    if durable is not None:
        out.append(_against(res, durable, f"headline, no-op drain of {durable[0]} ({durable[1]['median']:.0f}/s, "
                                          "Redis fsynced before each reply) against each peer's best layout: ",
                            lambda k: True))
    same = _fastest(res, "taskherd", lambda k: "everysec" in k)
    if same is not None:
        out.append(_against(res, same, f"at the same persistence, {same[0]} ({same[1]['median']:.0f}/s) against "
                                       "each peer's best layout with AOF everysec: ", lambda k: "no-AOF" not in k))
    return [line for line in out if line]


def _against(res: dict[str, Any], th: tuple[str, dict[str, Any]], lead: str, which: Callable[[str], bool]) -> str:
    """`lead`, then the ratio of `th`'s drain to each peer's fastest among the layouts `which` admits."""
    fastest = {p: _fastest(res, p, which) for p in PEERS}
    best = [f"{ratio(th[1], fig, None)}x {p} (its best here: {k}, {fig['median']:.0f}/s)"
            for p, (k, fig) in ((p, f) for p, f in fastest.items() if f is not None)]
    return lead + ", ".join(best) + "." if best else ""


def _fastest(res: dict[str, Any], system: str, which: Callable[[str], bool]) -> tuple[str, dict[str, Any]] | None:
    """(the layout, its no-op drain figure) of `system`'s fastest no-op drain in this run, among the
    layouts `which` admits."""
    runs = [(k, res[k]["noop"]["drain_rate"]) for k in layouts(res, system)
            if which(k) and "median" in res[k].get("noop", {}).get("drain_rate", {})]
    return max(runs, key=lambda kv: kv[1]["median"]) if runs else None


def text_table(report: dict[str, Any]) -> str:
    header, body, foot = rows(report)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    lines.append("")
    lines += [f"* {x}" for x in foot]
    m, c = report.get("machine", {}), report.get("configuration", {})
    lines.append(f"* machine: {m.get('cpu_model')}, {m.get('cores_logical')} cores, {m.get('ram_gb')} GB RAM; "
                 f"{c.get('total_slots')} slots per system; {report.get('reps')} repetition(s).")
    if report.get("errors"):
        lines.append(f"* errors: {report['errors']}")
    return "\n".join(lines)


def markdown_table(report: dict[str, Any]) -> str:
    header, body, foot = rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    lines.append("")
    m, c, v = report.get("machine", {}), report.get("configuration", {}), report.get("versions", {})
    pv = v.get("peers", {})
    lines.append(f"Run of {report.get('started')} (`{report.get('command')}`, {report.get('duration_s')} s), "
                 f"{report.get('reps')} repetition(s), cells are median (min-max). Machine: {m.get('cpu_model')}, "
                 f"{m.get('cores_logical')} cores, {m.get('ram_gb')} GB RAM, {m.get('os')}. "
                 f"{c.get('total_slots')} worker slots per system. Versions: taskherd {v.get('taskherd')} "
                 f"({v.get('taskherd_git')}), Python {v.get('python')}, {v.get('redis-server')}, {v.get('mariadb')}, "
                 f"nsqd {v.get('nsqd')}; Celery {pv.get('celery')}, Dramatiq {pv.get('dramatiq')}, RQ {pv.get('rq')}.")
    lines.append("")
    lines += [f"- {x}" for x in foot]
    if report.get("errors"):
        lines.append(f"- errors: {report['errors']}")
    return "\n".join(lines) + "\n"


START, END = "<!-- bench:last-table:start -->", "<!-- bench:last-table:end -->"


def update_readme(md: str) -> None:
    """Put the table of a full run between the markers of bench/README.md."""
    path = ROOT / "bench" / "README.md"
    try:
        text = path.read_text()
    except OSError:
        return
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: f"{START}\n{md}{END}", text, flags=re.S)
        path.write_text(text)
