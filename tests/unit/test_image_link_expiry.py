"""A signed image link lives at least its ttl from the moment it is signed, never a fraction of a
second less (the expiry is rounded up to its step from the exact clock, not the truncated one)."""

from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

from hypothesis import given
from hypothesis import strategies as st

from web.image_links import MIN_SECRET_BYTES, ImageLinks


@given(
    now=st.floats(min_value=1.7e9, max_value=2.0e9, allow_nan=False),
    ttl_s=st.integers(min_value=1, max_value=7 * 24 * 3600),
)
def test_a_link_lives_at_least_its_ttl_and_at_most_one_step_more(now: float, ttl_s: int) -> None:
    links = ImageLinks(b"s" * MIN_SECRET_BYTES, ttl_s, clock=lambda: now)
    exp = int(parse_qs(urlsplit(links.url(uuid4())).query)["exp"][0])
    step = max(1, min(60, ttl_s // 60))
    assert now + ttl_s <= exp < now + ttl_s + step
    assert exp % step == 0
