"""Render the evaluation results as Markdown and as one self-contained HTML page."""

from __future__ import annotations

import base64
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

DISCLAIMER = "Research use only. Not a diagnostic device; do not use these figures to make decisions about patients."


_TEMPLATES = Environment(loader=PackageLoader("cxrlab.evaluate", "templates"), autoescape=select_autoescape(["j2"]),
                         trim_blocks=True, lstrip_blocks=True)


def _fmt(value, ci: dict | None = None) -> str:
    if value is None:
        return "—"
    text = f"{value:.3f}"
    if ci and ci.get("low") is not None:
        text += f" ({ci['low']:.3f}–{ci['high']:.3f})"
    return text


def _tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    m, ci = results["metrics"], results["ci"]
    tables = []
    rows = []
    for name, pc in m["per_class"].items():
        c = ci["per_class"].get(name, {})
        rows.append([name, _fmt(pc["sensitivity"], c.get("sensitivity")), _fmt(pc["specificity"], c.get("specificity")),
                     _fmt(pc["precision"]), _fmt(pc["npv"]), _fmt(pc["f1"]), _fmt(pc["roc_auc"], c.get("roc_auc")),
                     _fmt(pc["pr_auc"], c.get("pr_auc")), str(pc["support"])])
    for avg in ("macro", "weighted"):
        a = m[avg]
        rows.append([f"*{avg} average*", _fmt(a["sensitivity"]), _fmt(a["specificity"]), _fmt(a["precision"]),
                     _fmt(a["npv"]), _fmt(a["f1"]), _fmt(a["roc_auc"], ci.get("auc_macro") if avg == "macro" else None),
                     _fmt(a["pr_auc"]), str(m["n"])])
    tables.append(("Per class (95% CI by bootstrap over patients)",
                   ["class", "sensitivity", "specificity", "precision (PPV)", "NPV", "F1", "ROC AUC", "PR AUC", "support"], rows))
    src_rows = [[s, str(v["n"]), _fmt(v["accuracy"]), _fmt(v["auc_macro"]), _fmt(v.get("auc_covid")),
                 _fmt(v.get("f1_macro")), ", ".join(f"{k} {n}" for k, n in v["classes"].items())]
                for s, v in results["per_source"].items()]
    tables.append(("Per source (the pooled figures mix sources: a source holding one class scores by telling "
                   "sources apart)", ["source", "images", "accuracy", "macro ROC AUC", "COVID-19 ROC AUC", "macro F1",
                                      "classes"], src_rows))
    b = results["binary"]
    op_rows = [[op["method"] + (f" ≥ {op['target']:.0%}" if op.get("target") else ""), f"{op['threshold']:.3f}",
                _fmt(op["sensitivity"]), _fmt(op["specificity"])] for op in b["operating_points"]]
    tables.append((f"{b['positive']} vs rest: ROC AUC {_fmt(b['roc_auc'], b['roc_auc_ci'])}; operating points chosen on "
                   f"{b['chosen_on']}, applied to the test data",
                   ["operating point", "threshold", "sensitivity", "specificity"], op_rows))
    cal = results["calibration"]
    tables.append(("Calibration", ["", "ECE"], [["as trained", _fmt(cal["ece"])]] + (
        [[f"temperature {cal['temperature']:.2f} (fitted on validation)", _fmt(cal["ece_calibrated"])]]
        if cal.get("temperature") else [])))
    for extra in results.get("extra_tables", []):  # sections added by layers above (explanations)
        tables.append((extra["title"], extra["header"], extra["rows"]))
    return tables


def _summary_lines(results: dict) -> list[str]:
    m, ci = results["metrics"], results["ci"]
    lines = [f"Model: `{results['model']['backbone']}` (fine-tuned blocks: {results['model']['fine_tune']}); "
             f"evaluated on {m['n']} images of {results['patients']} patients ({results['side']}).",
             f"Accuracy {_fmt(m['accuracy'], ci.get('accuracy'))}; macro ROC AUC {_fmt(m['macro']['roc_auc'], ci.get('auc_macro'))}."]
    lines += [f"**Warning:** {w}" for w in results["warnings"]]
    return lines


Table = tuple[str, list[str], list[list[str]]]


def _is_warning(line: str) -> bool:
    return line.startswith("**") and "warning" in line[:24].lower()


_TEMPLATES.tests["warning"] = _is_warning  # {% if line is warning %}


def markdown_page(title: str, lines: list[str], tables: list[Table], figures: dict[str, Path],
                  lists: list[tuple[str, list[str]]] = ()) -> str:
    """A report as Markdown: title, disclaimer, summary lines, tables, figures (linked by file
    name), then titled lists. Shared by the evaluation and the study reports."""
    out = [f"# {title}", "", f"_{DISCLAIMER}_", ""] + lines + [""]
    for heading, header, rows in tables:
        out += [f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    out += ["## Figures", ""] + [f"![{name}]({Path(path).name})" for name, path in figures.items()]
    for heading, items in lists:
        out += ["", f"## {heading}", ""] + [f"- {item}" for item in items]
    return "\n".join(out) + "\n"


def html_page(title: str, lines: list[str], tables: list[Table], figures: dict[str, Path],
              lists: list[tuple[str, list[str]]] = ()) -> str:
    """The same report as one HTML page with tables and figures embedded (no external files), from
    ``templates/report.html.j2`` (autoescaped)."""
    encoded = [(name, base64.b64encode(Path(path).read_bytes()).decode()) for name, path in figures.items()]
    return _TEMPLATES.get_template("report.html.j2").render(
        title=title, disclaimer=DISCLAIMER, lines=lines, tables=tables, figures=encoded, lists=lists)


def _skipped(results: dict) -> list[tuple[str, list[str]]]:
    return [("Images not evaluated", [f"{i}: {r}" for i, r in results["skipped"]])] if results["skipped"] else []


def render_markdown(results: dict, figures: dict[str, Path]) -> str:
    """The evaluation report as Markdown (figures linked by file name)."""
    return markdown_page("Evaluation report", _summary_lines(results), _tables(results), figures, _skipped(results))


def render_html(results: dict, figures: dict[str, Path]) -> str:
    """The evaluation report as one self-contained HTML page."""
    return html_page("Evaluation report", _summary_lines(results), _tables(results), figures, _skipped(results))
