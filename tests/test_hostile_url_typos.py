"""A mistyped Redis URL is refused in one line that never shows its password."""

from __future__ import annotations

import pytest

from daemon import redis_url
from daemon.redis_url import RedisUrlError

SECRET = "s3cr3tpw"


@pytest.mark.parametrize(
    "url",
    [
        f"redis:/:{SECRET}@host:6379/0",
        f"redis//:{SECRET}@host/0",
        f":{SECRET}@host",
        f"redis:/user:{SECRET}@host/0",
        f"redis:://:{SECRET}@host",
    ],
)
def test_a_url_with_a_typo_in_its_scheme_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        redis_url.parse(url)
    assert SECRET not in str(caught.value)
    assert "host" in str(caught.value)  # what it was is still recognisable


def test_an_unclosed_ipv6_bracket_is_refused_not_read_as_another_host() -> None:
    with pytest.raises(RedisUrlError, match="closing"):
        redis_url.parse(f"redis://:{SECRET}@[::1/0")
