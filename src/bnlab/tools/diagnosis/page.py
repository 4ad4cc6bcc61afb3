"""The doctor's report as one self-contained HTML page (``bnlab doctor --html OUT.html``).

No script, no external file: inline CSS and SVG. The page gives the summary, one section per kind of problem (its
table of layers and the fix), a chart of the train/eval gap of every layer the data reached (bars coloured by the
thresholds of ``stats_mismatch``), and, with labels, a chart of the measured effect: accuracy and loss in train
mode, eval mode and eval mode after recalibration.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from bnlab.tools.diagnosis.checks import MISMATCH_ERROR, MISMATCH_WARNING

if TYPE_CHECKING:
    from bnlab.tools.diagnosis.report import Effect, Group, LayerGap, Report

#: Severity colours (badges, table accents) and the gap bars' colours by level.
COLORS = {"error": "#c62828", "warning": "#ef6c00", "info": "#1565c0", "ok": "#2e7d32"}
#: One colour per measured configuration.
MODE_COLORS = {"train": "#6a1b9a", "eval": "#00838f", "recalibrated": "#9e9d24"}

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #212121; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin: 0 0 8px; }
.meta { color: #616161; margin-top: 0; }
.summary { font-size: 15px; padding: 10px 14px; background: #f5f5f5; border-radius: 6px; }
section { margin: 22px 0; } section.group { border-left: 5px solid #9e9e9e; padding-left: 14px; }
section.error { border-color: #c62828; } section.warning { border-color: #ef6c00; }
section.info { border-color: #1565c0; }
.badge { color: #fff; border-radius: 4px; padding: 1px 7px; font-size: 12px; text-transform: uppercase; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #e0e0e0; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.layer { font-family: ui-monospace, monospace; font-size: 12px; }
.fix { margin: 8px 0 0; } .notes { color: #616161; }
svg text { font: 11px system-ui, sans-serif; fill: #212121; }
"""


def render(report: Report) -> str:
    """The page for ``report``; every text from the model or the data is escaped."""
    title = f"bnlab doctor: {report.model}"
    what = f"{report.layers} batch-norm layer(s)" if report.layers else "no batch-norm layer"
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{escape(title)}</title>",
             f"<style>{STYLE}</style>\n</head>\n<body>",
             f"<h1>{escape(title)}</h1>",
             f"<p class=\"meta\">{escape(what)}, checked on {report.batches} batch(es) ({report.samples} samples)</p>",
             f"<p class=\"summary\" id=\"summary\">{escape(report.summary())}</p>"]
    parts += [_group(g) for g in report.groups()]
    if report.gaps:
        parts.append(_gap_chart(report.gaps))
    if report.effect is not None and report.effect.scores:
        parts.append(_effect_chart(report.effect))
    if report.notes:
        parts.append("<ul class=\"notes\">" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def _group(group: Group) -> str:
    mixed = len({f.severity for f in group.findings}) > 1
    rows = []
    for f in group.findings:
        severity = (f"<span class=\"badge\" style=\"background:{COLORS[f.severity]}\">{f.severity}</span> "
                    if mixed else "")
        rows.append(f"<tr><td class=\"layer\">{escape(f.layer or '(model)')}</td>"
                    f"<td class=\"num\">{severity}{escape(_fmt(f.value))}</td><td>{escape(f.detail or f.message)}</td>"
                    f"</tr>")
    fixes = list(dict.fromkeys(f.fix for f in group.findings))
    fix = fixes[0] if len(fixes) == 1 else group.kind.fix
    count = len([f for f in group.findings if f.layer])
    where = f"{count} layer{'s' if count != 1 else ''}" if count else "the model"
    return (f"<section class=\"group {group.severity}\" id=\"{escape(group.code)}\">\n"
            f"<h2><span class=\"badge\" style=\"background:{COLORS[group.severity]}\">{group.severity}</span> "
            f"{escape(group.kind.title)} <small>({where}; {escape(group.code)})</small></h2>\n"
            f"<table><thead><tr><th>layer</th><th>{escape(group.kind.label)}</th><th>evidence</th></tr></thead>\n"
            f"<tbody>\n" + "\n".join(rows) + "\n</tbody></table>\n"
            f"<p class=\"fix\"><b>Fix:</b> {escape(fix)}</p>\n</section>")


def _short(name: str, limit: int = 48) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _gap_chart(gaps: tuple[LayerGap, ...]) -> str:
    """Horizontal bars, one per layer in model order: the mean over channels of the eval-mode output error."""
    label_width, bar_width, row = 330, 560, 18
    top = 28
    height = top + row * len(gaps) + 30
    scale_max = max(1.25 * MISMATCH_ERROR, *(g.error_mean for g in gaps)) * 1.05
    x = lambda v: label_width + bar_width * v / scale_max  # noqa: E731
    items = [f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{label_width + bar_width + 80}\" "
             f"height=\"{height}\" role=\"img\" aria-label=\"train/eval gap per layer\">"]
    for threshold, severity in ((MISMATCH_WARNING, "warning"), (MISMATCH_ERROR, "error")):
        items.append(f"<line x1=\"{x(threshold):.1f}\" y1=\"{top - 6}\" x2=\"{x(threshold):.1f}\" "
                     f"y2=\"{height - 24}\" stroke=\"{COLORS[severity]}\" stroke-dasharray=\"4 3\"/>"
                     f"<text x=\"{x(threshold):.1f}\" y=\"{top - 10}\" text-anchor=\"middle\">{threshold:g}σ "
                     f"({severity})</text>")
    for i, gap in enumerate(gaps):
        y = top + i * row
        level = gap.error_mean
        color = COLORS["ok" if level < MISMATCH_WARNING else "warning" if level < MISMATCH_ERROR else "error"]
        items.append(f"<text x=\"{label_width - 6}\" y=\"{y + 12}\" text-anchor=\"end\">"
                     f"<title>{escape(gap.layer)}</title>{escape(_short(gap.layer or '(model)'))}</text>")
        length = max(x(level) - label_width, 3.0)  # a perfect layer still shows a sliver
        items.append(f"<rect class=\"gap\" x=\"{label_width}\" y=\"{y + 2}\" width=\"{length:.1f}\" "
                     f"height=\"{row - 5}\" fill=\"{color}\"><title>{escape(gap.layer)}: {level:.3f}σ (max "
                     f"{gap.error_max:.3f}σ)</title></rect>")
        items.append(f"<text x=\"{x(level) + 4:.1f}\" y=\"{y + 12}\">{level:.2f}</text>")
    axis = height - 22
    items.append(f"<line x1=\"{label_width}\" y1=\"{axis}\" x2=\"{label_width + bar_width}\" y2=\"{axis}\" "
                 f"stroke=\"#9e9e9e\"/><text x=\"{label_width + bar_width / 2}\" y=\"{axis + 16}\" "
                 f"text-anchor=\"middle\">eval-mode output error, standard deviations (mean over channels)</text>")
    items.append("</svg>")
    return ("<section id=\"gap-chart\"><h2>Train/eval gap per layer</h2>\n<p>How far each batch norm's eval-mode "
            "output is from its input correctly normalized on this data: 0 is perfect; the dashed lines are where "
            "the doctor warns and where it calls it an error.</p>\n" + "\n".join(items) + "\n</section>")


def _effect_chart(effect: Effect) -> str:
    """Bars per configuration: accuracy (classification) and loss, each panel on its own scale."""
    panels = [("loss", [s.loss for s in effect.scores], max(s.loss for s in effect.scores) * 1.15 or 1.0, "{:.3f}")]
    if all(s.accuracy is not None for s in effect.scores):
        panels.insert(0, ("accuracy", [float(s.accuracy or 0.0) for s in effect.scores], 1.0, "{:.1%}"))
    panel_width, bar, gap, height, top = 300, 60, 24, 220, 24
    width = len(panels) * (panel_width + 40)
    items = [f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height + 40}\" role=\"img\" "
             f"aria-label=\"measured effect\">"]
    for p, (name, values, top_value, fmt) in enumerate(panels):
        left = p * (panel_width + 40) + 20
        items.append(f"<text x=\"{left}\" y=\"14\">{escape(name)}</text>")
        for i, (score, value) in enumerate(zip(effect.scores, values, strict=True)):
            h = (height - top) * max(value, 0.0) / top_value if top_value > 0 else 0.0
            x = left + i * (bar + gap)
            items.append(f"<rect class=\"mode-{escape(score.mode)}\" x=\"{x}\" y=\"{height - h:.1f}\" width=\"{bar}\" "
                         f"height=\"{h:.1f}\" fill=\"{MODE_COLORS.get(score.mode, '#757575')}\"><title>"
                         f"{escape(score.description)}: {fmt.format(value)}</title></rect>")
            items.append(f"<text x=\"{x + bar / 2}\" y=\"{height - h - 4:.1f}\" text-anchor=\"middle\">"
                         f"{fmt.format(value)}</text>")
            items.append(f"<text x=\"{x + bar / 2}\" y=\"{height + 16}\" text-anchor=\"middle\">"
                         f"{escape(score.mode)}</text>")
        items.append(f"<line x1=\"{left - 4}\" y1=\"{height}\" x2=\"{left + 3 * (bar + gap)}\" y2=\"{height}\" "
                     f"stroke=\"#9e9e9e\"/>")
    items.append("</svg>")
    legend = "; ".join(f"{s.mode}: {s.description}" for s in effect.scores)
    return (f"<section id=\"effect-chart\"><h2>Measured effect on {effect.samples} samples "
            f"({escape(effect.loss_name)} loss)</h2>\n<p>{escape(legend)}.</p>\n" + "\n".join(items) + "\n</section>")
