"""Plots for the report as inline SVG strings: no plotting library, no script, nothing fetched."""

from __future__ import annotations

import math
from html import escape
from typing import Mapping, Sequence

#: Colour per series, in order (Okabe-Ito: distinguishable with colour blindness).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def scatter_log(
    series: Mapping[str, Sequence[tuple[float, float, str]]],
    *,
    width: int = 420,
    height: int = 380,
    title: str = "",
    band: float = 0.10,
    first_colour: int = 0,
) -> str:
    """Predicted (y) against measured (x), both log scale; the y = x line and a +-``band`` corridor.

    ``series`` maps a label to points (measured, predicted, tooltip text); series i gets
    colour ``first_colour + i`` of the palette.
    """
    points = [(x, y) for pts in series.values() for x, y, _ in pts if x > 0 and y > 0]
    left, right, top, bottom = 58, 12, 28, 44
    svg = _open(width, height, title)
    if not points:
        return svg + _text(width / 2, height / 2, "no data", anchor="middle") + "</svg>"
    lo = min(min(p) for p in points) / 1.15
    hi = max(max(p) for p in points) * 1.15
    llo, lhi = math.log10(lo), math.log10(hi)

    def sx(v: float) -> float:
        return left + (math.log10(v) - llo) / (lhi - llo) * (width - left - right)

    def sy(v: float) -> float:
        return height - bottom - (math.log10(v) - llo) / (lhi - llo) * (height - top - bottom)

    # the corridor x(1 - band) <= y <= x(1 + band), cut to the plot box
    corridor = [
        (lo, lo),
        (lo, lo * (1 + band)),
        (hi / (1 + band), hi),
        (hi, hi),
        (hi, hi * (1 - band)),
        (lo / (1 - band), lo),
    ]
    svg += '<polygon fill="#e8e8e8" points="{}"/>'.format(" ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in corridor))
    svg += _log_axes(sx, sy, lo, hi, left, width - right, top, height - bottom)
    svg += f'<line x1="{sx(lo):.1f}" y1="{sy(lo):.1f}" x2="{sx(hi):.1f}" y2="{sy(hi):.1f}" stroke="#888"/>'
    for i, pts in enumerate(series.values()):
        colour = PALETTE[(first_colour + i) % len(PALETTE)]
        for x, y, tip in pts:
            if x > 0 and y > 0:
                svg += (
                    f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{colour}" fill-opacity="0.8">'
                    f"<title>{escape(tip)}</title></circle>"
                )
    svg += _text(left + (width - left - right) / 2, height - 6, "measured (ms)", anchor="middle")
    svg += _text(14, top + (height - top - bottom) / 2, "predicted (ms)", anchor="middle", rotate=True)
    svg += _legend(list(series), left + 8, top + 8) if len(series) > 1 else ""
    return svg + "</svg>"


def histogram(
    values: Sequence[float],
    *,
    lo: float = -30.0,
    hi: float = 30.0,
    step: float = 2.5,
    width: int = 420,
    height: int = 220,
    title: str = "",
    unit: str = "%",
    colour: str = PALETTE[0],
) -> str:
    """Counts of ``values`` in bins of ``step`` from ``lo`` to ``hi``, the outer bins collecting the rest."""
    edges = [lo + i * step for i in range(int(round((hi - lo) / step)) + 1)]
    counts = [0] * (len(edges) - 1)
    for v in values:
        if math.isfinite(v):
            i = min(max(int((v - lo) // step), 0), len(counts) - 1)
            counts[i] += 1
    left, right, top, bottom = 40, 12, 28, 40
    svg = _open(width, height, title)
    top_count = max(counts) if any(counts) else 1
    bw = (width - left - right) / len(counts)
    plot_h = height - top - bottom
    for i, c in enumerate(counts):
        h = c / top_count * plot_h
        x = left + i * bw
        tip = f"[{edges[i]:g}, {edges[i + 1]:g}) {unit}: {c}"
        svg += (
            f'<rect x="{x + 0.5:.1f}" y="{height - bottom - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
            f'fill="{colour}"><title>{escape(tip)}</title></rect>'
        )
    svg += f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#444"/>'
    for i, e in enumerate(edges):
        if i % 4 == 0:
            x = left + i * bw
            svg += _text(x, height - bottom + 14, f"{e:g}", anchor="middle")
    for band in (-10, 10):
        if lo < band < hi:
            x = left + (band - lo) / step * bw
            svg += (
                f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" stroke="#D55E00" '
                'stroke-dasharray="4 3"/>'
            )
    svg += _text(left - 4, top + 4, str(top_count), anchor="end")
    svg += _text(
        left + (width - left - right) / 2,
        height - 6,
        f"relative error ({unit}); outer bins hold everything beyond",
        anchor="middle",
    )
    return svg + "</svg>"


def hbars(rows: Sequence[tuple[str, float]], *, width: int = 420, unit: str = "min", title: str = "") -> str:
    """Horizontal bars, one per (label, value)."""
    bar_h, left, right, top = 20, 130, 60, 26
    height = top + bar_h * max(len(rows), 1) + 8
    svg = _open(width, height, title)
    peak = max((v for _, v in rows), default=0) or 1
    for i, (label, value) in enumerate(rows):
        y = top + i * bar_h
        w = value / peak * (width - left - right)
        svg += _text(left - 6, y + 14, label, anchor="end")
        svg += f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{bar_h - 6}" fill="{PALETTE[0]}"/>'
        svg += _text(left + w + 4, y + 14, f"{value:.1f} {unit}")
    return svg + "</svg>"


def _open(width: int, height: int, title: str) -> str:
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
    )
    if title:
        svg += _text(width / 2, 16, title, anchor="middle", weight="bold")
    return svg


def _text(x: float, y: float, text: str, *, anchor: str = "start", rotate: bool = False, weight: str = "normal") -> str:
    transform = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-weight="{weight}"{transform}>{escape(text)}</text>'
    )


def _log_axes(sx, sy, lo: float, hi: float, x0: float, x1: float, y0: float, y1: float) -> str:
    out = f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#444"/>'
    for tick in _log_ticks(lo, hi):
        label = f"{tick:g}"
        out += f'<line x1="{sx(tick):.1f}" y1="{y1}" x2="{sx(tick):.1f}" y2="{y1 + 4}" stroke="#444"/>'
        out += _text(sx(tick), y1 + 16, label, anchor="middle")
        out += f'<line x1="{x0 - 4}" y1="{sy(tick):.1f}" x2="{x0}" y2="{sy(tick):.1f}" stroke="#444"/>'
        out += _text(x0 - 6, sy(tick) + 4, label, anchor="end")
    return out


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks inside [lo, hi]; a plain 1-10-100 when the range spans many decades."""
    ticks = []
    for decade in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1,) if math.log10(hi / lo) > 2.5 else (1, 2, 5):
            t = m * 10.0**decade
            if lo <= t <= hi:
                ticks.append(t)
    return ticks


def _legend(labels: Sequence[str], x: float, y: float) -> str:
    out = ""
    for i, label in enumerate(labels):
        colour = PALETTE[i % len(PALETTE)]
        out += f'<circle cx="{x + 4}" cy="{y + i * 14 + 4}" r="4" fill="{colour}"/>'
        out += _text(x + 12, y + i * 14 + 8, label)
    return out
