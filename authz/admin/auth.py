"""The admin token check: ``authorization: Bearer <token>`` on every AdminService call.

Constant-time comparison (``hmac.compare_digest``) of SHA-256 digests, so neither the content
nor the length of the token leaks through timing. Without a configured token the API refuses
every call (fail closed). The token is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from enum import Enum


class Verdict(Enum):
    OK = "ok"
    UNAUTHENTICATED = "unauthenticated"  # missing or wrong token
    DISABLED = "disabled"  # no token configured: nobody may call


class TokenCheck:
    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode("utf-8")).digest() if token else None

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def check(self, metadata: Iterable[tuple[str, str | bytes]]) -> Verdict:
        if self._digest is None:
            return Verdict.DISABLED
        values = [v for k, v in metadata if k.lower() == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return Verdict.UNAUTHENTICATED
        scheme, _, presented = values[0].partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return Verdict.UNAUTHENTICATED
        digest = hashlib.sha256(presented.strip().encode("utf-8")).digest()
        return Verdict.OK if hmac.compare_digest(digest, self._digest) else Verdict.UNAUTHENTICATED
