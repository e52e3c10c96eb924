"""The text table of a ``QualityReport``."""

from __future__ import annotations

from workers.bench.quality.run import TARGET_AUTO_RATE, TARGET_PRECISION, QualityReport
from workers.bench.quality.score import Score


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _pts(v: dict[str, float | None]) -> str:
    minus, over = v["minus"], v["over"]
    if minus is None:
        return "-"
    return f"{100 * minus:+.1f} pts" + (f" (x{over:.2f})" if over is not None else " (x -)")


def _score_cells(s: Score) -> str:
    b = s.bands
    return (
        f"{s.rows:>6}  {pct(b['auto'].share):>7} {pct(b['auto'].precision):>8}"
        f"  {pct(b['suggest'].share):>7} {pct(b['suggest'].precision):>8}"
        f"  {pct(b['none'].share):>7}  {pct(s.correction_rate):>7}"
    )


def _header(r: QualityReport) -> list[str]:
    skipped = ", ".join(f"{k} {v}" for k, v in r.skipped.items()) or "none"
    lines = [
        f"quality bench: {r.data}",
        f"  mode: {r.mode}; path: {r.path}; one user for every row",
        "  columns: " + ", ".join(f"{k}={v}" for k, v in r.columns.items()) + f"; rows left out: {skipped}",
    ]
    if r.mode == "online":
        lines.append(
            f"  online: {r.test_rows} labelled rows, {r.test_months[0]}..{r.test_months[-1]}: each month"
            " categorized, then its wrong or missing answers corrected"
            f" (catfleet: {r.corrections} corrections, {r.learned_patterns} learned patterns)"
        )
    else:
        lines.append(
            f"  train: {r.train_rows} labelled rows, {r.train_months[0]}..{r.train_months[-1]}"
            f" -> {r.corrections} corrections, {r.learned_patterns} learned patterns"
        )
        if r.gap_months:
            lines.append(f"  gap:   {r.gap_months[0]}..{r.gap_months[-1]} left out")
        lines.append(
            f"  test:  {r.test_rows} labelled rows, {r.test_months[0]}..{r.test_months[-1]}"
            f" (split month {r.split_month}; nothing learned from them)"
        )
    lines += [
        f"  thresholds: auto >= {r.auto_threshold}, suggest >= {r.suggest_threshold}; {r.categories} categories",
        f"  baselines: {r.baseline_rule}",
    ]
    return lines


def format_report(r: QualityReport) -> str:
    lines = [*_header(r), "", "  catfleet", "  band      rows   share    precision"]
    for band, s in r.bands.items():
        lines.append(f"  {band:<8} {s.rows:>5}  {pct(s.share):>7}  {pct(s.precision):>9}")
    verdict = "meets" if r.meets_target else "MISSES"
    lines += [
        "",
        f"  auto-categorized {pct(r.auto_rate)} at {pct(r.auto_precision)} precision"
        f" ({verdict} the target: >= {TARGET_AUTO_RATE:.0%} at >= {TARGET_PRECISION:.0%})",
        "",
        "  method               slice     rows     auto     prec  suggest     prec     none  to fix",
    ]
    for name, m in r.methods.items():
        for part, sc in (("all", m.overall), ("seen", m.slices["seen"]), ("unseen", m.slices["unseen"])):
            lines.append(f"  {name if part == 'all' else '':<20} {part:<7} {_score_cells(sc)}")
    lines += ["", "  catfleet vs baseline: auto share, auto precision, rows to fix (catfleet minus, x over)"]
    for name, parts in r.versus.items():
        for part, v in parts.items():
            lines.append(
                f"  {name if part == 'overall' else '':<20} {part:<7}  auto {_pts(v['auto_rate'])},"
                f" precision {_pts(v['auto_precision'])}, to fix {_pts(v['correction_rate'])}"
            )
    names = list(r.methods)
    lines += [
        "",
        "  per month: auto share / auto precision / rows to fix (corrections sent after the month)",
        "  month    phase   rows  " + "  ".join(f"{n:<30}" for n in names),
    ]
    for i, cf in enumerate(r.months):
        cells = []
        for n in names:
            ms = r.methods[n].months[i]
            cells.append(
                f"{pct(ms.auto_rate):>7} {pct(ms.auto_precision):>7} {pct(ms.correction_rate):>7}"
                f" ({ms.corrections:>4})"
            )
        lines.append(f"  {cf.month}  {cf.phase:<6} {cf.rows:>5}  " + "  ".join(f"{c:<30}" for c in cells))
    if r.top_auto_errors:
        lines += ["", "  catfleet's most frequent wrong auto answers (merchant: label -> chosen):"]
        lines += [
            f"    {e['merchant']!r}: {e['label']} -> {e['chosen']} ({e['rows']})" for e in r.top_auto_errors
        ]
    lines += ["", "  seconds: " + ", ".join(f"{k} {v}" for k, v in r.seconds.items())]
    return "\n".join(line.rstrip() for line in lines)
