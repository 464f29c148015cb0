"""HTML of the run report and the benchmark report: one self-contained file each (inline CSS, data-URI images).

Nothing on the page is fetched: no script, no font, no stylesheet from elsewhere. Text from result files
(paths, names) is HTML-escaped. Numbers are the ones in the result files; the charts come from ``plots``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from generalad.report_html import plots
from generalad.report_html.results import Results

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1c1c1c;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:22px;margin:6px 0 2px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #dde1e6;padding-bottom:4px}
.sub{color:#5c6370;margin:0 0 10px}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #dde1e6;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
.grid{display:flex;flex-wrap:wrap;gap:14px}.cols{display:flex;flex-wrap:wrap;gap:22px;align-items:flex-start}
figure{margin:0;background:#fff;border:1px solid #dde1e6;padding:6px;border-radius:4px}
figure img{display:block;max-width:100%}figcaption{font-size:12px;color:#444;max-width:330px;margin-top:4px}
.note{background:#fff8db;border:1px solid #f0d66c;padding:6px 10px;border-radius:4px;max-width:900px}
.legend span{display:inline-block;width:12px;height:12px;vertical-align:middle;margin:0 4px 0 10px;border:1px solid #999}
footer{color:#868e96;font-size:12px;margin-top:30px}
"""

METRIC_ROWS = (
    ("image_auroc", "image AUROC"), ("image_ap", "image AP"), ("image_f1max", "image F1-max (oracle threshold)"),
    ("pixel_auroc", "pixel AUROC"), ("pixel_aupro", "pixel AUPRO (FPR ≤ 0.3)"), ("pixel_ap", "pixel AP"),
    ("pixel_f1max", "pixel F1-max (oracle threshold)"), ("pixel_auspro@0.05", "pixel AUsPRO@0.05"),
)  # fmt: skip


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def pct(value: Any) -> str:
    """A [0, 1] metric in % with one decimal; '–' when missing or undefined (NaN / null)."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{100.0 * value:.1f}"


def num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else esc(value)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] | None = None) -> str:
    """An HTML table; cells are already-escaped HTML fragments."""
    numeric = numeric or [False] * len(header)
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if n else f"<td>{c}</td>" for c, n in zip(r, numeric)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def document(title: str, body: str) -> str:
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{body}"
        f"<footer>Written by generalad on {esc(stamp)}. Self-contained: every chart and image is inside this "
        "file; nothing is fetched when it is opened.</footer></main></body></html>\n"
    )


def figure(uri: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


# --------------------------------------------------------------------------- run report


def run_report(res: Results) -> str:
    """The whole page for one results folder."""
    m = res.metrics
    where = "/".join(str(x) for x in (m.get("dataset"), m.get("category")) if x)
    title = f"{m.get('model', '?')} on {where or res.folder.name}"
    parts = [
        f"<h1>{esc(title)}</h1><p class='sub'>results folder <code>{esc(res.folder.resolve())}</code></p>",
        "<h2>Protocol</h2>" + protocol_table(m),
        "<h2>Metrics</h2>" + metrics_tables(m),
        "<h2>Image scores</h2>" + image_charts(res),
        "<h2>Pixels</h2>" + pixel_section(res),
        "<h2>Per defect type</h2>" + defect_table(m),
        "<h2>Worst mistakes at the calibrated threshold</h2>" + gallery(res),
    ]
    return document(f"generalad report: {title}", "".join(parts))


def protocol_table(m: Mapping[str, Any]) -> str:
    """The stamps every result must carry: what was fitted, on what, selected how, thresholded how."""
    cal = m.get("calibration") or {}
    rule = cal.get("applied") or (cal.get("rule") or {}).get("kind")
    resolution = m.get("evaluation_resolution")
    rows = [
        ("method", esc(m.get("model"))),
        ("backbone", esc(m.get("backbone"))),
        ("backbone weights sha256", f"<code>{esc(m.get('weights_sha256'))}</code>"),
        ("working size", esc(m.get("image_size"))),
        ("precision / device", f"{esc(m.get('precision'))} / {esc(m.get('device'))}"),
        ("model selection", esc(m.get("selection"))),
        ("image threshold", f"{num(m.get('threshold'), 6)} &nbsp;(decision: score &gt; threshold; {esc(rule)})"),
        ("threshold source", esc(m.get("threshold_source") or cal.get("source"))),
        ("dataset", f"{esc(m.get('dataset'))} / {esc(m.get('category'))} &nbsp;<code>{esc(m.get('data_root'))}</code>"),
        ("test images", f"{esc(m.get('n_test'))} (left out as seen in fit: "
                        f"{len(m.get('excluded_from_test_as_seen_in_fit') or [])})"),
        ("pixel evaluation", esc("x".join(map(str, resolution)) if isinstance(resolution, list) else resolution)
         if "pixel_auroc" in m else "none (no ground-truth masks)"),
        ("speed / memory", f"{num(m.get('images_per_second'))} images/s, peak RSS {num(m.get('peak_rss_mb'))} MB"),
    ]
    return table(["stamp", "value"], rows)


def metrics_tables(m: Mapping[str, Any]) -> str:
    present = [(k, name) for k, name in METRIC_ROWS if k in m]
    left = table(["metric (threshold-free)", "%"], [(esc(name), pct(m[k])) for k, name in present], [False, True])
    at = m.get("at_threshold") or {}
    rows = [(esc(k), num(at.get(k))) for k in ("tp", "fp", "tn", "fn", "tpr", "fpr", "precision", "f1") if k in at]
    right = table(["at the calibrated threshold", "value"], rows, [False, True])
    note = ("<p class='sub'>F1-max picks its threshold on the test labels (an oracle number); the decisions "
            "on this page use the calibrated threshold, set on normal images only.</p>")
    return f"<div class='cols'>{left}{right}</div>{note}"


def image_charts(res: Results) -> str:
    scores, labels = res.scores, res.labels
    known = (labels >= 0) & np.isfinite(scores)  # unlabelled images and undefined (null) scores are not charted
    dropped = int((~known).sum())
    scores, labels = scores[known], labels[known]
    note = f"<p class='note'>{dropped} image(s) without a label or a finite score are not charted.</p>" if dropped else ""
    hist = figure(plots.histogram(scores, labels, res.threshold), "score histogram",
                  "Raw scores of the normal and the anomalous test images; dashed: the calibrated threshold.")
    if not ((labels == 0).any() and (labels == 1).any()):
        return f"{note}<p class='note'>The test set has one class only: no ROC or PR curve.</p><div class='grid'>{hist}</div>"
    curves = figure(plots.roc_pr(scores, labels, res.threshold, res.metrics.get("image_auroc"),
                                 res.metrics.get("image_ap")), "ROC and PR curves")
    return f"{note}<div class='grid'>{curves}{hist}</div>"


def pixel_section(res: Results) -> str:
    ev = res.evidence
    if "pixel_aupro" not in res.metrics:
        return "<p class='note'>This test set has no ground-truth masks: no pixel metrics and no PRO curve.</p>"
    if ev is None:
        return ("<p class='note'>No PRO curve recorded in this folder (inspect.json is written by generalad test "
                "since issue 18): run test again to see it.</p>")
    if not ev.get("pro_curve"):
        return "<p class='note'>No defect pixel (or no normal pixel) in this test set: the PRO curve is undefined.</p>"
    curve = ev["pro_curve"]
    caption = (f"Sampled at {len(curve['fpr'])} FPRs from the curve whose area is pixel AUPRO "
               f"({curve['mode']} pixel store).")
    return f"<div class='grid'>{figure(plots.pro(curve, res.metrics.get('pixel_aupro')), 'PRO curve', caption)}</div>"


def defect_table(m: Mapping[str, Any]) -> str:
    per = m.get("per_defect_type")
    if not per:
        return "<p class='note'>No per-defect-type numbers in metrics.json (written by generalad test since issue 18).</p>"
    pixels = any("pixel_auroc" in v for v in per.values())  # test sets with masks (metrics.json since issue 15)
    pixel_keys = ("pixel_auroc", "pixel_ap", "pixel_aupro") if pixels else ()
    rows = [(esc(k), esc(v["n"]), pct(v["image_auroc"]), pct(v["detected"]), *(pct(v.get(p)) for p in pixel_keys))
            for k, v in per.items()]
    size = m.get("per_defect_type_pixels", {}).get("eval_size")
    at = f" at {size[0]}×{size[1]}" if size else ""
    head = ["defect type", "images", "image AUROC vs all good, %", "detected at threshold, %",
            *([f"pixel AUROC{at}, %", "pixel AP, %", "pixel AUPRO, %"] if pixels else [])]
    return table(head, rows, [False] + [True] * (len(head) - 1))


def gallery(res: Results) -> str:
    ev = res.evidence
    if ev is None:
        return "<p class='note'>No gallery recorded in this folder (written by generalad test since issue 18).</p>"
    legend = ("<p class='legend sub'>Heat-map on the run's fixed colour scale (Turbo, the pixel threshold mid-scale)"
              "<span style='background:#fff'></span>predicted region (map &gt; pixel threshold)"
              "<span style='background:#f0f'></span>ground-truth defect mask</p>")
    parts = [legend]
    for kind, title, empty in (
        ("false_positives", "False positives: normal images scored above the threshold, highest first",
         "No false positive: every normal test image scored at or below the threshold."),
        ("false_negatives", "False negatives: anomalous images scored at or below the threshold, lowest first",
         "No false negative: every anomalous test image scored above the threshold."),
    ):
        cases = ev.get("gallery", {}).get(kind, [])
        parts.append(f"<h3>{esc(title)} (up to {esc(ev.get('gallery_k'))})</h3>")
        figs = [_case_figure(res.folder, c) for c in cases]
        parts.append(f"<div class='grid'>{''.join(figs)}</div>" if figs else f"<p class='sub'>{esc(empty)}</p>")
    return "".join(parts)


def _case_figure(folder: Path, case: Mapping[str, Any]) -> str:
    png = folder / case["png"]
    try:
        uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
    except OSError:
        return f"<figure><p class='note'>missing overlay {esc(case['png'])}</p></figure>"
    mask = "" if case.get("has_mask") or case.get("label") == 0 else " (no mask file)"
    caption = (f"score {num(case['score'], 5)} · {esc(case['defect_type'])}{mask}"
               f"<br><span class='mono'>{esc(case['path'])}</span>")
    return figure(uri, f"{case['defect_type']} {Path(case['path']).name}", caption)


# --------------------------------------------------------------------------- benchmark report


def benchmark_report(title: str, rows: Sequence[Mapping[str, Any]], table_csv_rows: Sequence[Sequence[str]],
                     links: Mapping[int, str]) -> str:
    """Benchmark page: the table (same cells as table.md), a chart per metric, every row's stamps.

    ``rows``: results.jsonl rows; ``table_csv_rows``: table.csv as lists (header first); ``links``: row index →
    relative path of that run's own report.
    """
    header, body = table_csv_rows[0], table_csv_rows[1:]
    main_table = table([esc(h) for h in header], [[esc(c) for c in r] for r in body],
                       [False, False] + [True] * (len(header) - 2))
    charts = [_metric_chart(rows, k, name) for k, name in (("image_auroc", "image AUROC"), ("pixel_aupro", "pixel AUPRO"))
              if any(isinstance(r.get(k), (int, float)) for r in rows)]
    stamp_rows = [
        (_linked(esc(r.get("unit")), links.get(i)), esc(r.get("dataset")), esc(r.get("model")), esc(r.get("seed")),
         esc(r.get("backbone")), f"<code>{esc(str(r.get('weights_sha256'))[:16])}</code>", esc(r.get("selection")),
         pct(r.get("image_auroc")), num(r.get("images_per_second")))
        for i, r in enumerate(rows)
    ]
    stamps = table(["unit (run report)", "dataset", "model", "seed", "backbone", "weights sha256", "selection",
                    "image AUROC %", "images/s"], stamp_rows, [False] * 7 + [True, True])
    body_html = (f"<h1>{esc(title)}</h1><p class='sub'>{len(rows)} fit + test runs; metrics in %, raw scores.</p>"
                 f"<h2>Table</h2>{main_table}<h2>Charts</h2><div class='grid'>{''.join(charts)}</div>"
                 f"<h2>Runs and their protocol stamps</h2>{stamps}")
    return document(f"generalad benchmark: {title}", body_html)


def _linked(text: str, href: str | None) -> str:
    return f"<a href='{esc(href)}'>{text}</a>" if href else text


def _metric_chart(rows: Sequence[Mapping[str, Any]], key: str, name: str) -> str:
    """Mean over seeds of ``key`` per (dataset/unit, model)."""
    units = list(dict.fromkeys(f"{r['dataset']}/{r['unit']}" for r in rows))
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    series: dict[str, list[float | None]] = {}
    for model in models:
        vals = []
        for unit in units:
            got = [float(r[key]) for r in rows if f"{r['dataset']}/{r['unit']}" == unit and str(r["model"]) == model
                   and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            vals.append(float(np.mean(got)) if got else None)
        series[model] = vals
    return figure(plots.grouped_bars(units, series, f"{name}, %", f"{name} (mean over seeds)"), name)
