"""An eval run on disk: the full JSON record and a self-contained HTML page to read it by eye."""
from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path

from oss_serve.bench.evals.runner import EvalSummary

_PAGE_STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;width:100%}"
               "td,th{border:1px solid #ccc;padding:6px;vertical-align:top;text-align:left}"
               "pre{white-space:pre-wrap;margin:0;max-height:24em;overflow:auto}"
               ".ok{background:#e8f6e8}.bad{background:#fbeaea}.failed{background:#eee}")


def report_stem(summary: EvalSummary, timestamp: str) -> str:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", summary.model).strip("_")
    return f"{summary.eval_name}_{model}_{summary.reasoning_effort}_{summary.sampler}_{timestamp}"


def render_html(summary: EvalSummary) -> str:
    rows = []
    for result in summary.results:
        css = "failed" if result.failed else ("ok" if result.score > 0 else "bad")
        verdict = f"failed: {result.error}" if result.failed else f"score {result.score:g}"
        rows.append(
            f'<tr class="{css}"><td>{html.escape(result.example_id)}<br>repeat {result.repeat}</td>'
            f"<td><pre>{html.escape(result.prompt)}</pre></td><td><pre>{html.escape(result.reply)}</pre></td>"
            f"<td>{html.escape(result.reference)}</td><td>{html.escape(str(result.extracted))}</td>"
            f"<td>{html.escape(verdict)}</td></tr>")
    title = html.escape(f"{summary.eval_name}: {summary.model}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_PAGE_STYLE}</style></head><body><h1>{title}</h1>"
            f"<p>{html.escape(summary.summary_line())}</p>"
            "<table><tr><th>example</th><th>prompt</th><th>reply</th><th>reference</th><th>extracted</th>"
            f"<th>grade</th></tr>{''.join(rows)}</table></body></html>")


def write_reports(summary: EvalSummary, output_dir: Path, timestamp: str) -> tuple[Path, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = report_stem(summary, timestamp)
    json_path = output_dir / f"{stem}.json"
    html_path = output_dir / f"{stem}.html"
    json_path.write_text(json.dumps(dataclasses.asdict(summary), indent=2), encoding="utf-8")
    html_path.write_text(render_html(summary), encoding="utf-8")
    return json_path, html_path
