"""``catfleet bench quality --data PATH``: categorization quality on real labelled transactions,
against trivial baselines in the same run, on the same rows.

The labelled rows of a CSV (``data``: a date, a merchant, an amount and a label per row) are
split by month, never by random row, in one of three modes: ``holdout`` (the latest months
holding about 25 % of the rows test, or from ``--split-month``), ``gap`` (the first N months
train, the next M are left out, the rest test) and ``online`` (month by month, every wrong or
missing answer is corrected after the month). The same months go through catfleet
(``catfleet``: the real pipeline in-process, in a throwaway database) and through two lookups
(``methods``: the majority label per exact and per normalized merchant, with the smoothed ratio
of learned patterns as their confidence), in the same order and with the same corrections
(``score``); each is scored per band, per slice (merchant seen in training or not) and per month.
"""

from workers.bench.quality.catfleet import BENCH_USER, category_key
from workers.bench.quality.data import Columns, LabelledRow, default_split, phases, read_data, read_rows
from workers.bench.quality.methods import Answer, LookupBaseline, baselines
from workers.bench.quality.report import format_report
from workers.bench.quality.run import QualityReport, run_quality_bench
from workers.bench.quality.score import replay

__all__ = [
    "BENCH_USER",
    "Answer",
    "Columns",
    "LabelledRow",
    "LookupBaseline",
    "QualityReport",
    "baselines",
    "category_key",
    "default_split",
    "format_report",
    "phases",
    "read_data",
    "read_rows",
    "replay",
    "run_quality_bench",
]
