"""API key format and arithmetic: ``nz_<prefix>_<secret>``.

The prefix (12 lowercase base32 characters) is public and indexes the key row; the secret is
256 random bits (43 base64url characters). Only the argon2id hash of the whole key is stored;
the full key is shown once, at creation. Caches are keyed by :func:`cache_id`, a SHA-256 of
the whole presented key, never by the prefix alone.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

KEY_PREFIX = "nz_"
_PREFIX_LEN = 12
_SECRET_BYTES = 32
_KEY_RE = re.compile(r"nz_([a-z2-7]{12})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class NewKey:
    full: str
    prefix: str
    hash: str


def hasher(time_cost: int = 2, memory_kib: int = 19456) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)


def generate(ph: PasswordHasher) -> NewKey:
    prefix = base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()[:_PREFIX_LEN]
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")
    full = f"{KEY_PREFIX}{prefix}_{secret.rstrip('=')}"
    return NewKey(full=full, prefix=prefix, hash=ph.hash(full))


def parse_prefix(presented: str) -> str | None:
    """The key's public prefix, or None when the string is not a well-formed key."""
    match = _KEY_RE.fullmatch(presented)
    return match.group(1) if match else None


def verify(ph: PasswordHasher, stored_hash: str, presented: str) -> bool:
    """Constant-time argon2id verification; any malformed hash counts as a mismatch."""
    try:
        return ph.verify(stored_hash, presented)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def cache_id(presented: str) -> str:
    return hashlib.sha256(presented.encode("utf-8")).hexdigest()


def parse_bearer(values: list[str]) -> str | None:
    """The key from exactly one ``Authorization: Bearer <key>`` header, else None.

    Two Authorization headers, another scheme, a lowercase ``bearer``, stray whitespace or
    bytes outside printable ASCII all yield None: the caller answers one identical 401.
    """
    if len(values) != 1 or not values[0].startswith("Bearer "):
        return None
    return parse_plain([values[0][len("Bearer ") :]])


def parse_plain(values: list[str]) -> str | None:
    """The key from exactly one header that carries it bare (Anthropic's ``x-api-key``)."""
    if len(values) != 1:
        return None
    key = values[0]
    if not key or not key.isascii() or not key.isprintable() or key != key.strip():
        return None
    if " " in key:
        return None
    return key
