"""The one merchant normalizer, used for patterns and expenses alike.

``PAYPAL *STARBUCKS 402935`` -> ``starbucks``; ``TST* WALMART STORE #4567`` -> ``walmart``;
``UBER *TRIP HELP.UBER.COM`` -> ``uber trip``; ``STARBUCKS #1234 SEATTLE WA`` -> ``starbucks``.
Deterministic, pure, bounded input.
"""

from __future__ import annotations

import functools
import re
import unicodedata

#: Longest text considered; the rest of a hostile 1 MB string is ignored.
MAX_INPUT_CHARS = 256

# Payment processors and card-network prefixes that precede the real merchant, e.g. "SQ *".
_PROCESSOR_PREFIX = re.compile(
    r"^(?:(?:paypal|pp|sq|tst|sp|sumup|sum ?up|iz|izettle|zettle_?|ckm|dd|dnh|fs|gglpay|google|"
    r"stripe|pos purchase|pos|debit card purchase|card purchase|purchase|recurring|ach|checkcard|"
    r"visa|mc|www|clover|toast|doordash|dd doordash)\s*\*+\s*|"
    r"(?:pos purchase|debit card purchase|card purchase|checkcard|pos|purchase)\s+)+"
)
_URL = re.compile(
    r"\b(?:https?://)?(?:[a-z0-9-]+\.)+(?:com|net|org|co|uk|io|de|fr|ca|au|us|za|biz)\b(?:/\S*)?"
)
_PHONE = re.compile(r"\+?\d[\d\s().-]{6,}\d")
_STORE_NO = re.compile(
    r"(?:\b(?:store|str|no|nr|unit|branch|loc)\.?\s*)?#\s*\d+|\b(?:store|no|nr)\.?\s+\d+\b"
)
_DIGITS = re.compile(r"\b[a-z]*\d[a-z\d]*\b")  # tokens with digits: store numbers, refs, dates
_PURE_DIGITS = re.compile(r"\b\d+\b")
_LETTER = re.compile(r"[^\W\d_]")
_NON_WORD = re.compile(r"[^\w&' ]+|_")
_SPACES = re.compile(r"\s+")
_SUFFIXES = frozenset(
    [
        "inc",
        "incorporated",
        "llc",
        "ltd",
        "limited",
        "co",
        "corp",
        "corporation",
        "plc",
        "gmbh",
        "ag",
        "sa",
        "sarl",
        "bv",
        "pty",
        "pte",
        "lp",
        "llp",
        "the",
    ]
)
# Trailing two-letter US state codes ("SEATTLE WA") are location noise, not merchant.
_US_STATES = frozenset(
    [
        "al",
        "ak",
        "az",
        "ar",
        "ca",
        "co",
        "ct",
        "de",
        "fl",
        "ga",
        "hi",
        "id",
        "il",
        "in",
        "ia",
        "ks",
        "ky",
        "la",
        "me",
        "md",
        "ma",
        "mi",
        "mn",
        "ms",
        "mo",
        "mt",
        "ne",
        "nv",
        "nh",
        "nj",
        "nm",
        "ny",
        "nc",
        "nd",
        "oh",
        "ok",
        "or",
        "pa",
        "ri",
        "sc",
        "sd",
        "tn",
        "tx",
        "ut",
        "vt",
        "va",
        "wa",
        "wv",
        "wi",
        "wy",
        "dc",
    ]
)

_STATE_ALT = "|".join(sorted(_US_STATES))
# US card descriptors end "NAME [#STORE] CITY ST [ZIP]". After a store number or digit run, the
# (up to 3) words before a trailing state code are the city: "STARBUCKS #1234 SEATTLE WA",
# "SHELL OIL 57442215400 HOUSTON TX 77002". The number itself goes later, with the store numbers.
_CITY_AFTER_NUMBER = re.compile(
    rf"(?<=\d)(?:[\s,]+[a-z][a-z'.-]*){{1,3}}[\s,]+(?:{_STATE_ALT})(?:\s+\d{{5}}(?:-\d{{4}})?)?\s*$"
)
# Without a store number, a city is only recognised by name, and only in its own state, right
# before that state's code: "STARBUCKS SEATTLE WA", "SQ *BLUE BOTTLE COFFEE OAKLAND CA". The
# largest US cities (and a few card-heavy ones) by state; a name is never reduced to nothing.
_US_CITIES: dict[str, frozenset[str]] = {
    state: frozenset(cities.split(","))
    for state, cities in {
        "ak": "anchorage",
        "al": "huntsville,montgomery",  # not birmingham: the UK one is far more frequent here
        "ar": "little rock",
        "az": "phoenix,tucson,mesa,chandler,gilbert,glendale,scottsdale,tempe",
        "ca": "los angeles,san diego,san jose,san francisco,fresno,sacramento,long beach,oakland,"
        "bakersfield,anaheim,santa ana,riverside,stockton,irvine,chula vista,fremont,san bernardino,"
        "modesto,santa clarita,oxnard,huntington beach,santa rosa,pasadena,palo alto,mountain view,"
        "sunnyvale,santa monica,berkeley,burbank,cupertino,menlo park,redwood city,santa clara",
        "co": "denver,colorado springs,aurora,fort collins,boulder",
        "ct": "hartford,new haven,stamford,bridgeport",
        "dc": "washington",
        "fl": "jacksonville,miami,tampa,orlando,st petersburg,saint petersburg,hialeah,tallahassee,"
        "fort lauderdale,miami beach,boca raton,west palm beach,gainesville",
        "ga": "atlanta,savannah,augusta",
        "hi": "honolulu",
        "ia": "des moines,cedar rapids",
        "id": "boise",
        "il": "chicago,naperville,joliet,rockford,evanston,schaumburg",
        "in": "indianapolis,fort wayne,evansville,south bend",
        "ks": "wichita,overland park,topeka",
        "ky": "louisville,lexington",
        "la": "new orleans,baton rouge,shreveport",
        "ma": "boston,worcester,cambridge",
        "md": "baltimore,annapolis,bethesda,rockville,silver spring",
        "mi": "detroit,grand rapids,ann arbor,lansing,dearborn",
        "mn": "minneapolis,st paul,saint paul",
        "mo": "kansas city,st louis,saint louis",
        "nc": "charlotte,raleigh,greensboro,durham,winston salem,asheville,chapel hill",
        "ne": "omaha",
        "nj": "newark,jersey city,hoboken,trenton",
        "nm": "albuquerque,santa fe,las cruces",
        "nv": "las vegas,north las vegas,henderson,reno",
        "ny": "new york,brooklyn,bronx,staten island,long island city,buffalo,rochester,yonkers,"
        "syracuse,albany",
        "oh": "columbus,cleveland,cincinnati,toledo,akron,dayton",
        "ok": "oklahoma city,tulsa",
        "or": "portland,eugene,beaverton",
        "pa": "philadelphia,pittsburgh,allentown,harrisburg",
        "ri": "providence",
        "sc": "charleston,myrtle beach",
        "sd": "sioux falls,rapid city",
        "tn": "nashville,memphis,knoxville,chattanooga",
        "tx": "houston,san antonio,dallas,austin,fort worth,el paso,corpus christi,plano,laredo,"
        "lubbock,irving,frisco,mckinney,amarillo,grand prairie,round rock,sugar land",
        "ut": "salt lake city,provo,park city",
        "va": "virginia beach,norfolk,chesapeake,richmond,alexandria,newport news",
        "wa": "seattle,spokane,tacoma,bellevue,redmond,everett,kirkland,olympia",
        "wi": "milwaukee,madison,green bay",
    }.items()
}


def _fold(text: str) -> str:
    """Lower-case and strip accents: 'Café' -> 'cafe'."""
    decomposed = unicodedata.normalize("NFKD", text[:MAX_INPUT_CHARS])
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@functools.lru_cache(maxsize=65_536)
def normalize_merchant(raw: str) -> str:
    """The canonical merchant key; '' when nothing recognisable is left."""
    text = _fold(raw).strip()
    text = _PROCESSOR_PREFIX.sub("", text)
    text = _URL.sub(lambda m: " " + _domain_name(m.group(0)) + " ", text)
    text = _CITY_AFTER_NUMBER.sub("", text)
    text = _PHONE.sub(" ", text)
    text = _STORE_NO.sub(" ", text)
    text = text.replace("*", " ")
    without_digits = _DIGITS.sub(" ", text)
    if _LETTER.search(without_digits) is None:  # 'O2', '3M': the digits are part of the name
        without_digits = _PURE_DIGITS.sub(" ", text)
    text = without_digits
    text = _NON_WORD.sub(" ", text).replace("'", "")
    tokens = [t for t in _SPACES.split(text) if t and t != "&"]
    while len(tokens) > 1 and (tokens[-1] in _SUFFIXES or tokens[-1] in _US_STATES):
        last = tokens.pop()
        if last in _US_CITIES:
            tokens = _without_city(tokens, _US_CITIES[last])
    while len(tokens) > 1 and tokens[0] == "the":
        tokens.pop(0)
    return " ".join(_dedupe(tokens))


def _without_city(tokens: list[str], cities: frozenset[str]) -> list[str]:
    """``tokens`` without a trailing city of ``cities`` (1-3 words), if a name is left before it."""
    for n in range(min(3, len(tokens) - 1), 0, -1):
        if " ".join(tokens[-n:]) in cities:
            return tokens[:-n]
    return tokens


def _domain_name(url: str) -> str:
    """'help.uber.com' -> '' when the name repeats elsewhere; 'amazon.com' -> 'amazon'."""
    host = url.split("//")[-1].split("/")[0]
    labels = [p for p in host.split(".") if p not in {"www", "help", "pay", "m"}]
    return labels[0] if len(labels) >= 2 else ""


def _dedupe(tokens: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for t in tokens:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def merchant_keys(normalized: str, *, max_keys: int = 3) -> list[str]:
    """Lookup keys, most specific first: the whole name, then shorter leading-token prefixes.

    'starbucks reserve roastery' -> ['starbucks reserve roastery', 'starbucks reserve', 'starbucks'].
    A one-token prefix must be at least 3 characters long to count.
    """
    if not normalized:
        return []
    tokens = normalized.split(" ")
    keys = [normalized]
    for n in range(len(tokens) - 1, 0, -1):
        if len(keys) >= max_keys:
            break
        prefix = " ".join(tokens[:n])
        if n == 1 and len(prefix) < 3:
            break
        keys.append(prefix)
    return keys


def normalize_text(raw: str) -> str:
    """Descriptions and keywords: folded, punctuation to spaces, single-spaced."""
    text = _NON_WORD.sub(" ", _fold(raw).replace("'", ""))
    return _SPACES.sub(" ", text).strip()
