"""Knowledge beyond the exact merchant: merchant tokens and the fleet's merchant votes.

Token learning: the words of a normalized merchant name (and adjacent word pairs) that predict
a category across merchants (``fuel``, ``petrol``, ``stationers``, ``school``). A token counts
once per distinct merchant (the merchant's vote: the majority of its corrected expenses), so one
merchant corrected a hundred times is one vote; it fires only with votes of at least
``TOKEN_MIN_MERCHANTS`` merchants, at the smoothed ratio ``agreeing / (merchants + TOKEN_PRIOR)``,
and on its own it may apply a category automatically only with ``TOKEN_STRONG_MERCHANTS``
agreeing merchants (below that the matcher caps its score just under the auto threshold).

Fleet learning: a merchant that at least ``FLEET_MIN_USERS`` different users voted for the same
category becomes a global learned pattern, weight ``agreeing / (voting users + FLEET_PRIOR)``.
"""

from __future__ import annotations

import functools
import itertools

#: A token fires only with the votes of at least this many distinct merchants for its category.
TOKEN_MIN_MERCHANTS = 2
#: ... and alone decides automatically (band auto) only with this many; below, it is capped.
TOKEN_STRONG_MERCHANTS = 3
#: Smoothing of a token's ratio: agreeing merchants / (merchants with the token + prior).
TOKEN_PRIOR = 0.5
#: Shorter words are no tokens (pairs may hold them).
TOKEN_MIN_CHARS = 3
#: Only the first words of a name make tokens (bounds the work per expense and correction).
TOKEN_MAX_WORDS = 6
#: Words that say nothing about what was bought.
STOPWORDS = frozenset({"the", "and", "for", "www", "com", "net", "org", "ltd", "plc", "inc"})
#: Cache keys of token entries: ``(user or 0, TOKEN_KEY_PREFIX + token)``. A normalized merchant
#: never holds this character, so token entries cannot collide with merchant entries.
TOKEN_KEY_PREFIX = "~"
#: The key ``(user, TOKEN_ENTRY)`` holds all of a user's learned token votes, up to
#: ``TOKEN_ENTRY_MAX`` (a longer entry means "too many: look them up per token"), so a batch
#: needs one cache entry per user for the user's tokens, not one per user and token.
TOKEN_ENTRY = TOKEN_KEY_PREFIX
TOKEN_ENTRY_MAX = 1_000

#: Different users who must vote for a merchant's category before it becomes a global pattern.
FLEET_MIN_USERS = 3
#: Smoothing of a fleet pattern's weight: agreeing users / (users voting for the merchant + prior).
FLEET_PRIOR = 0.5


@functools.lru_cache(maxsize=65_536)
def merchant_tokens(normalized: str) -> tuple[str, ...]:
    """The tokens of a normalized merchant name: its words of at least ``TOKEN_MIN_CHARS``
    letters that are not stopwords, then adjacent word pairs, each once, in order.

    'shell petrol station' -> ('shell', 'petrol', 'station', 'shell petrol', 'petrol station').
    """
    words = normalized.split()[:TOKEN_MAX_WORDS]
    singles = [w for w in words if len(w) >= TOKEN_MIN_CHARS and w not in STOPWORDS and not w.isdigit()]
    pairs = [f"{a} {b}" for a, b in itertools.pairwise(words)]
    return tuple(dict.fromkeys(singles + pairs))


def token_key(token: str) -> str:
    return TOKEN_KEY_PREFIX + token


@functools.lru_cache(maxsize=65_536)
def token_keys(normalized: str) -> tuple[str, ...]:
    """The cache keys of the merchant's tokens, in ``merchant_tokens`` order."""
    return tuple(token_key(t) for t in merchant_tokens(normalized))


def is_token_key(value: str) -> bool:
    return value.startswith(TOKEN_KEY_PREFIX)


def token_weight(agreeing: int, merchants: int) -> float:
    """The smoothed share of merchants with the token that vote for the category."""
    return round(agreeing / (merchants + TOKEN_PRIOR), 4)
