"""Pattern values: validation at save time and the compiled rule set for non-merchant kinds.

Keywords and descriptions are matched in one pass (Aho-Corasick), regexes in one pass of an
RE2 set (linear time: no ReDoS), amount ranges and times by comparison.

Values are checked when a pattern is saved, but a row written by plain SQL skips that check. The
compiled rule set therefore skips a value it cannot compile (a regex RE2 rejects, an unparsable
amount range or time) instead of raising: one bad row must not fail every batch. A skip is logged
once per compile (the resolver compiles once per ruleset version and process), kept on
``Ruleset.skipped`` and reported to the hooks registered with ``on_skipped_pattern``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable, Sequence

import ahocorasick
import msgspec
import re2

from pipeline.errors import InvalidPattern
from pipeline.normalize import normalize_merchant, normalize_text
from schemas import Expense, Pattern, PatternKind

log = logging.getLogger(__name__)

MAX_REGEX_CHARS = 300
#: RE2 refuses programs over this size: a guard against patterns that are merely huge.
RE2_MAX_MEM = 8 << 20

_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*\.\.\s*(\d+(?:\.\d+)?)?\s*$")
_TIME_PART = re.compile(r"^(hours|days)=(.+)$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def regex_source(value: str) -> str:
    """A stored regex as RE2 runs it: multi-line, so ``^`` and ``$`` anchor each line of
    ``regex_subject`` (the merchant's start and end, the description's)."""
    return f"(?m){value}"


def regex_subject(merchant_name: str, description: str) -> str:
    """What a regex is matched against: the raw merchant name (as the card network wrote it,
    case-insensitive) on one line and the raw description on the next, each stripped of
    surrounding whitespace; ``boutique$`` fires on "BLUE BOUTIQUE" with or without a description."""
    return f"{merchant_name[:256].strip()}\n{description[:768].strip()}"


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = RE2_MAX_MEM
    options.case_sensitive = False
    return options


def _re2_error(value: str) -> str | None:
    """Why RE2 refuses ``value`` (its own message), or None when it compiles."""
    try:
        re2.compile(regex_source(value), _re2_options())
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        return str(detail)
    return None


class Hit(msgspec.Struct, frozen=True):
    """One pattern that fired for one expense, with the score it contributes."""

    pattern: Pattern
    score: float
    detail: str


def compile_problem(kind: PatternKind | str, value: str) -> str | None:
    """Why a stored value would be skipped by the rule-set compile (None: it compiles): what
    ``Ruleset`` checks per kind, for listing patterns with their problems."""
    try:
        kind = PatternKind(kind)
        if kind is PatternKind.REGEX:
            error = _re2_error(value)
            return None if error is None else f"regex rejected by RE2: {error}"
        if kind is PatternKind.AMOUNT_RANGE:
            parse_amount_range(value)
        elif kind is PatternKind.TIME:
            parse_time(value)
    except (InvalidPattern, ValueError) as exc:
        return str(exc)
    return None


def canonical_value(kind: PatternKind | str, value: str) -> str:
    """The stored form of a pattern value; raises InvalidPattern with a clear reason."""
    kind = PatternKind(kind)
    if kind is PatternKind.TOKEN:
        raise InvalidPattern("token patterns are learned from corrections, not saved")
    if kind is PatternKind.MERCHANT:
        out = normalize_merchant(value)
    elif kind in (PatternKind.KEYWORD, PatternKind.DESCRIPTION):
        out = normalize_text(value)
    elif kind is PatternKind.REGEX:
        if len(value) > MAX_REGEX_CHARS:
            raise InvalidPattern(f"regex longer than {MAX_REGEX_CHARS} characters")
        error = _re2_error(value)
        if error is not None:
            raise InvalidPattern(f"regex rejected by RE2 (only linear-time syntax is allowed): {error}")
        out = value
    elif kind is PatternKind.AMOUNT_RANGE:
        low, high = parse_amount_range(value)
        out = f"{'' if low is None else low}..{'' if high is None else high}"
    else:
        parse_time(value)
        out = value.strip().lower()
    if not out:
        raise InvalidPattern(f"{kind.value} pattern {value[:50]!r} is empty after normalization")
    return out


def parse_amount_range(value: str) -> tuple[float | None, float | None]:
    """'10..50', '..5', '100..' (inclusive bounds)."""
    m = _AMOUNT.match(value)
    if not m or (m[1] is None and m[2] is None):
        raise InvalidPattern(f"amount_range must look like 'LOW..HIGH', got {value[:50]!r}")
    low, high = (float(m[1]) if m[1] else None), (float(m[2]) if m[2] else None)
    if low is not None and high is not None and low > high:
        raise InvalidPattern(f"amount_range {value!r}: low bound above high bound")
    return low, high


def parse_time(value: str) -> tuple[tuple[int, int] | None, frozenset[int] | None]:
    """'hours=6-10', 'days=sat,sun' or both joined by ';' (hours in 0-23, end inclusive)."""
    hours: tuple[int, int] | None = None
    days: frozenset[int] | None = None
    for part in value.strip().lower().split(";"):
        m = _TIME_PART.match(part.strip())
        if not m:
            raise InvalidPattern(
                f"time pattern must be 'hours=H-H' and/or 'days=mon,...', got {value[:50]!r}"
            )
        if m[1] == "hours":
            try:
                a, b = (int(x) for x in m[2].split("-"))
            except ValueError:
                raise InvalidPattern(f"bad hours in {value!r}") from None
            if not (0 <= a <= 23 and 0 <= b <= 23):
                raise InvalidPattern(f"hours out of range in {value!r}")
            hours = (a, b)
        else:
            names = [d.strip()[:3] for d in m[2].split(",")]
            if any(d not in _DAYS for d in names):
                raise InvalidPattern(f"bad day name in {value!r}")
            days = frozenset(_DAYS.index(d) for d in names)
    return hours, days


class SkippedPattern(msgspec.Struct, frozen=True):
    """A stored pattern the rule set could not compile, and why."""

    pattern: Pattern
    reason: str


#: ``hook(skipped, ruleset_version)``, called once per skipped pattern per compile (for a metric).
SkipHook = Callable[[SkippedPattern, int], None]
_skip_hooks: list[SkipHook] = []
_SKIPS_LOGGED = 20  # the log line names at most this many skipped patterns


def on_skipped_pattern(hook: SkipHook) -> None:
    """Call ``hook(skipped, version)`` for every pattern a rule-set compile skips (a hook
    registered twice is called once)."""
    if hook not in _skip_hooks:
        _skip_hooks.append(hook)


class Ruleset:
    """The compiled non-merchant patterns of one ruleset version (global and per user).

    A pattern whose value does not compile is skipped (see the module docstring), never raised.
    """

    def __init__(self, version: int, patterns: Iterable[Pattern]):
        self.version = version
        self.patterns: tuple[Pattern, ...] = tuple(p for p in patterns if p.kind is not PatternKind.MERCHANT)
        self._text = ahocorasick.Automaton()
        self._amounts: list[tuple[Pattern, float | None, float | None]] = []
        self._times: list[tuple[Pattern, tuple[int, int] | None, frozenset[int] | None]] = []
        skipped: list[SkippedPattern] = []
        regexes: list[Pattern] = []
        words: dict[str, list[Pattern]] = {}
        for p in self.patterns:
            try:
                if p.kind in (PatternKind.KEYWORD, PatternKind.DESCRIPTION):
                    words.setdefault(f" {p.value} ", []).append(p)
                elif p.kind is PatternKind.REGEX:
                    error = _re2_error(p.value)
                    if error is not None:
                        raise InvalidPattern(f"regex rejected by RE2: {error}")
                    regexes.append(p)
                elif p.kind is PatternKind.AMOUNT_RANGE:
                    self._amounts.append((p, *parse_amount_range(p.value)))
                elif p.kind is PatternKind.TIME:
                    self._times.append((p, *parse_time(p.value)))
            except InvalidPattern as exc:
                skipped.append(SkippedPattern(p, str(exc)))
        for word, owners in words.items():
            self._text.add_word(word, tuple(owners))
        if words:
            self._text.make_automaton()
        self._regex_sets = _regex_sets(regexes, skipped)
        self.skipped: tuple[SkippedPattern, ...] = tuple(skipped)
        if skipped:
            self._report_skipped()

    def _report_skipped(self) -> None:
        """One log line for the compile (the first few skips in full), then the hooks."""
        shown = [
            {
                "pattern_id": s.pattern.id,
                "kind": s.pattern.kind.value,
                "value": s.pattern.value[:100],
                "reason": s.reason,
            }
            for s in self.skipped[:_SKIPS_LOGGED]
        ]
        log.error(
            "ruleset %d: %d pattern(s) skipped, their values do not compile (fix or delete the rows): %s",
            self.version,
            len(self.skipped),
            "; ".join(f"{d['pattern_id']} {d['kind']} {d['value']!r}: {d['reason']}" for d in shown),
            extra={
                "event": "patterns_skipped",
                "ruleset_version": self.version,
                "count": len(self.skipped),
                "skipped": shown,
            },
        )
        for skip in self.skipped:
            for hook in _skip_hooks:
                try:
                    hook(skip, self.version)
                except Exception:  # a broken metrics hook must not break categorization
                    log.exception("skipped-pattern hook failed")

    def match(self, expense: Expense, merchant: str) -> list[Hit]:
        """Every rule that fires for the expense (any user's rules are filtered by the caller)."""
        hits: list[Hit] = []
        description = normalize_text(expense.description[:1024])
        if self._text.kind == ahocorasick.AHOCORASICK:
            haystack = f" {merchant} | {description} "
            split = len(merchant) + 2
            for end, owners in self._text.iter(haystack):
                for p in owners:
                    in_merchant = end < split
                    if p.kind is PatternKind.DESCRIPTION and in_merchant:
                        continue
                    where = "merchant" if in_merchant else "description"
                    hits.append(Hit(p, p.weight, f"{p.kind.value} {p.value!r} in {where}"))
        if self._regex_sets:
            subject = regex_subject(expense.merchant_name, expense.description)
            for regex_set, owners in self._regex_sets:
                for i in sorted(regex_set.Match(subject) or ()):
                    p = owners[i]
                    hits.append(Hit(p, p.weight, f"regex /{p.value}/"))
        for p, low, high in self._amounts:
            if (low is None or expense.amount >= low) and (high is None or expense.amount <= high):
                hits.append(Hit(p, p.weight, f"amount {expense.amount:g} in {p.value}"))
        for p, hours, days in self._times:
            if _time_fires(expense, hours, days):
                hits.append(Hit(p, p.weight, f"time {p.value}"))
        return hits


def _regex_sets(
    patterns: Sequence[Pattern], skipped: list[SkippedPattern]
) -> list[tuple[re2.Set, Sequence[Pattern]]]:
    """RE2 sets matching ``patterns`` (Set index i is ``owners[i]``): one set, or as few as fit
    RE2's memory budget when together they are too big (halved until they fit; a pattern too
    big on its own is skipped)."""
    if not patterns:
        return []
    regex_set = re2.Set.SearchSet(_re2_options())
    owners: list[Pattern] = []
    for p in patterns:
        try:
            regex_set.Add(regex_source(p.value))  # the index of an added pattern is len(owners)
        except re2.error as exc:
            skipped.append(SkippedPattern(p, f"regex rejected by RE2: {exc}"))
            continue
        owners.append(p)
    if not owners:
        return []
    try:
        regex_set.Compile()
    except re2.error:
        if len(owners) == 1:
            skipped.append(SkippedPattern(owners[0], "regex too large for RE2's memory budget"))
            return []
        half = len(owners) // 2
        return _regex_sets(owners[:half], skipped) + _regex_sets(owners[half:], skipped)
    return [(regex_set, owners)]


def _time_fires(expense: Expense, hours: tuple[int, int] | None, days: frozenset[int] | None) -> bool:
    if days is not None and expense.transaction_date.weekday() not in days:
        return False
    if hours is not None:
        if expense.transaction_time is None:
            return False
        h, (a, b) = expense.transaction_time.hour, hours
        if not (a <= h <= b if a <= b else h >= a or h <= b):
            return False
    return True


def weekday_name(day: dt.date) -> str:
    return _DAYS[day.weekday()]


def user_rules(rules: Sequence[Pattern], user_id: int) -> list[Pattern]:
    return [p for p in rules if p.user_id == user_id]
