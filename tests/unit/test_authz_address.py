"""What failed key checks are counted under: the client's address, an IPv6 client's /64."""

from __future__ import annotations

import pytest

from authz.keys import address_bucket


@pytest.mark.parametrize(
    ("peer", "bucket"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("127.0.0.2", "127.0.0.2"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),  # the same subscriber's other address
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:198.51.100.4", "198.51.100.4"),  # IPv4-mapped: the IPv4 address
        ("", "-"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_the_address_bucket(peer: str, bucket: str) -> None:
    assert address_bucket(peer) == bucket
