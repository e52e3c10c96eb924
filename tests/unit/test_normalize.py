import pytest

from pipeline.normalize import merchant_keys, normalize_merchant, normalize_text


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("PAYPAL *STARBUCKS 402935", "starbucks"),
        ("UBER *TRIP HELP.UBER.COM", "uber trip"),
        ("TST* WALMART STORE #4567", "walmart"),
        ("SQ *BLUE BOTTLE COFFEE", "blue bottle coffee"),
        ("SP * ALLBIRDS", "allbirds"),
        ("STARBUCKS SEATTLE WA", "starbucks seattle"),
        ("The Home Depot #6543", "home depot"),
        ("McDonald's F12345", "mcdonalds"),
        ("NETFLIX.COM 866-579-7172 CA", "netflix"),
        ("amazon.com", "amazon"),
        ("Café Rouge Ltd", "cafe rouge"),
        ("ACME WIDGETS INC", "acme widgets"),
        ("SHELL OIL 57442215400", "shell oil"),
        ("POS PURCHASE KROGER #123", "kroger"),
        ("  starbucks   ", "starbucks"),
        ("日本料理 東京", "日本料理 東京"),
        ("", ""),
        ("#1234 5678", ""),
    ],
)
def test_normalize_merchant(raw: str, normalized: str) -> None:
    assert normalize_merchant(raw) == normalized


def test_normalization_is_idempotent() -> None:
    for raw in ["PAYPAL *STARBUCKS 402935", "TST* WALMART STORE #4567", "Café Rouge Ltd"]:
        once = normalize_merchant(raw)
        assert normalize_merchant(once) == once


def test_huge_input_is_bounded() -> None:
    assert len(normalize_merchant("A" * 1_000_000)) <= 256


def test_merchant_keys_most_specific_first() -> None:
    assert merchant_keys("starbucks reserve roastery") == [
        "starbucks reserve roastery",
        "starbucks reserve",
        "starbucks",
    ]
    assert merchant_keys("uber trip") == ["uber trip", "uber"]
    assert merchant_keys("ab cd") == ["ab cd"]  # a 2-letter prefix is too vague
    assert merchant_keys("") == []


def test_normalize_text() -> None:
    assert normalize_text("Team LUNCH -- Pizza!!") == "team lunch pizza"
