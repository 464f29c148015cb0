"""Self-contained HTML reports of a ``test`` results folder and of a benchmark (docs/INSPECT.md).

``write_report(RES, OUT)`` reads ``RES/metrics.json``, ``predictions.jsonl`` and ``inspect.json`` (written by
``generalad.evaluate``, see ``evidence``) and writes one HTML file that opens offline. Importing this package
is cheap: matplotlib loads only when a report is written (``evaluate`` imports ``evidence`` on every test).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from generalad.io import atomic_write_text

REPORT_FILE = "report.html"


def write_report(res_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of results folder ``res_dir`` to ``out`` (default ``res_dir/report.html``), atomically."""
    from generalad.report_html.page import run_report
    from generalad.report_html.results import load_results

    res = load_results(res_dir)
    target = Path(out) if out is not None else Path(res_dir) / REPORT_FILE
    return atomic_write_text(target, run_report(res))


def write_benchmark_report(out_dir: str | Path, rows: Sequence[Mapping[str, Any]], table_csv: str,
                           links: Mapping[int, str] | None = None, title: str | None = None) -> Path:
    """``out_dir/report.html`` for a benchmark: its table (``table_csv`` as written to table.csv), charts, stamps."""
    from generalad.report_html.page import benchmark_report

    out = Path(out_dir)
    parsed = list(csv.reader(io.StringIO(table_csv)))
    html_text = benchmark_report(title or out.name, rows, parsed, links or {})
    return atomic_write_text(out / REPORT_FILE, html_text)


__all__ = ["REPORT_FILE", "write_report", "write_benchmark_report"]
