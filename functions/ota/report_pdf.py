"""A rollout's PDF report (reportlab), from what reports.rollout_report read: the summary
table, the per-wave counts, a chart of its jobs' final statuses over time and its timeline.
Plain rendering, no I/O: the route caches the bytes (functions/ota/reports.py)."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

# Columns of the wave table and the chart's series, in the order an operator reads them.
SHOWN = ("done", "error", "timed_out", "cancelled", "pending")
IN_FLIGHT = ("scheduled", "ready", "dispatched", "downloading", "flashing")
SERIES = {"done": colors.green, "error": colors.red, "timed_out": colors.orange,
          "cancelled": colors.grey}  # fmt: skip
_GRID = TableStyle([
    ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef5")),
    ("FONTSIZE", (0, 0), (-1, -1), 8),
    ("VALIGN", (0, 0), (-1, -1), "TOP"),
])  # fmt: skip


def render(report: dict[str, Any]) -> bytes:
    rollout = report["rollout"]
    styles = getSampleStyleSheet()
    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=A4, title=f"Rollout {rollout['id']}",
                            leftMargin=15 * mm, rightMargin=15 * mm)  # fmt: skip
    counts = rollout["counts"]
    in_flight = sum(counts.get(s, 0) for s in IN_FLIGHT)
    durations = report["durations"]
    summary = [
        ["Rollout", rollout["id"]],
        ["Firmware", rollout["firmware_version"]],
        ["Status", rollout["status"] + (f" ({rollout['reason']})" if rollout["reason"] else "")],
        ["Devices", str(rollout["device_count"])],
        ["Current wave", f"{rollout['current_wave']} of {len(rollout['waves'])}"],
        ["Success threshold", f"{rollout['success_threshold']}%"],
        *([s, str(counts.get(s, 0))] for s in SHOWN),
        ["in flight", str(in_flight)],
        ["Mean duration", _seconds(durations["mean_s"])],
        ["Longest duration", _seconds(durations["max_s"])],
        ["Created", rollout["created_at"]],
    ]
    wave_rows = [["wave", "percent", "devices", "status", *SHOWN, "in flight"]]
    for n, wave in enumerate(rollout["waves"], start=1):
        c = wave["counts"]
        wave_rows.append([str(n), f"{wave['percent']:g}%", str(len(wave["devices"])),
                          wave["status"], *(str(c.get(s, 0)) for s in SHOWN),
                          str(sum(c.get(s, 0) for s in IN_FLIGHT))])  # fmt: skip
    story: list[Any] = [
        Paragraph(f"Rollout report: firmware {_escape(rollout['firmware_version'])}",
                  styles["Title"]),
        Paragraph("Summary", styles["Heading2"]),
        _table(summary, [45 * mm, 130 * mm]),
        Paragraph("Waves", styles["Heading2"]),
        _table(wave_rows),
        Paragraph("Final statuses over time", styles["Heading2"]),
        chart(report["finished"], _start(rollout)),
    ]  # fmt: skip
    if report["timeline"]:
        rows = [["at", "event", "status", "wave", "reason"]]
        rows += [[e["at"].strftime("%Y-%m-%d %H:%M:%S"), e["type"], e["status"], str(e["wave"]),
                  Paragraph(_escape(e["reason"] or ""), styles["BodyText"])]
                 for e in report["timeline"]]  # fmt: skip
        story += [Paragraph("Timeline", styles["Heading2"]),
                  _table(rows, [32 * mm, 35 * mm, 18 * mm, 12 * mm, 83 * mm])]  # fmt: skip
    story.append(Spacer(1, 4 * mm))
    doc.build(story)
    return out.getvalue()


def chart(finished: list[tuple[datetime, str]], start: datetime) -> Drawing:
    """Cumulative jobs per final status against minutes since the rollout was created."""
    drawing = Drawing(180 * mm, 75 * mm)
    if not finished:
        drawing.add(String(10, 100, "No job has finished yet.", fontSize=10))
        return drawing
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = 40, 30, 130 * mm, 60 * mm
    lines: list[list[tuple[float, float]]] = []
    names = []
    for status, colour in SERIES.items():
        points, total = [(0.0, 0.0)], 0
        for at, final in finished:
            if final == status:
                total += 1
                points.append(((at - start).total_seconds() / 60, float(total)))
        if total:
            lines.append(points)
            names.append((colour, status))
    plot.data = lines
    for i, (colour, _) in enumerate(names):
        plot.lines[i].strokeColor = colour
        plot.lines[i].strokeWidth = 1.5
    plot.xValueAxis.valueMin = 0
    plot.yValueAxis.valueMin = 0
    plot.xValueAxis.labelTextFormat = "%.1f"
    plot.yValueAxis.labelTextFormat = "%d"
    drawing.add(plot)
    drawing.add(String(plot.x + plot.width / 2 - 40, 5, "minutes since created", fontSize=8))
    legend = Legend()
    legend.x, legend.y = plot.x + plot.width + 10, plot.y + plot.height
    legend.colorNamePairs = names
    legend.fontSize = 8
    drawing.add(legend)
    return drawing


def _start(rollout: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(rollout["created_at"].replace("Z", "+00:00"))


def _table(rows: list[list[Any]], widths: list[float] | None = None) -> Table:
    table = Table(rows, colWidths=widths, hAlign="LEFT", repeatRows=1)
    table.setStyle(_GRID)
    return table


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
