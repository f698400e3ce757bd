"""What the RLS says about one descriptor (Envoy's ``DescriptorStatus``, typed)."""

from __future__ import annotations

from dataclasses import dataclass

from ratelimit.descriptors import Limit


@dataclass(frozen=True, slots=True)
class Status:
    over: bool
    limit: Limit | None = None
    remaining: int = 0
    reset_ms: int = 0  # until the window is empty
    retry_ms: int = 0  # over only: until the same hit would fit
    shadow_over: bool = False
    near: bool = False
    quota: str | None = None  # "requests" | "tokens": which OpenAI headers report it
