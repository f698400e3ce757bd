"""The counting rule and the shape of one generation: prompt words in, ``token0 token1 ...`` out,
the knobs (``mock_error_after``, ``mock_omit_counts``) and the final frame's timings."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from devstack.mock_ollama.wire import JSONObj

DEFAULT_OUTPUT_TOKENS: Final = 8
MOCK_ERROR: Final = "mock failure"


def word_count(text: Any) -> int:
    """Whitespace-separated words of a string (anything else: 0)."""
    return len(text.split()) if isinstance(text, str) else 0


def as_count(value: Any) -> int | None:
    """An int >= 0 (JSON numbers like 5.0 count), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def body_options(body: JSONObj) -> JSONObj:
    opts = body.get("options")
    return opts if isinstance(opts, dict) else {}


def _error_after(opts: JSONObj) -> int | None:
    return as_count(opts.get("mock_error_after"))


@dataclass
class Plan:
    """What one generation request produces."""

    prompt_tokens: int
    pieces: list[str]
    error_after: int | None
    omit_counts: bool
    started_ns: int = field(default_factory=time.perf_counter_ns)
    delay_s: float = 0.0

    @classmethod
    def build(cls, prompt_words: int, n_out: Any, opts: JSONObj, delay_s: float) -> Plan:
        count = as_count(n_out)
        n = DEFAULT_OUTPUT_TOKENS if count is None else count
        pieces = [f"token{i}" if i == 0 else f" token{i}" for i in range(n)]
        return cls(
            prompt_tokens=max(1, prompt_words),
            pieces=pieces,
            error_after=_error_after(opts),
            omit_counts=opts.get("mock_omit_counts") is True,
            delay_s=max(0.0, delay_s),
        )

    @property
    def eval_count(self) -> int:
        return len(self.pieces)

    @property
    def frames(self) -> list[str]:
        """The content pieces actually streamed (fewer when an error cuts the stream)."""
        if self.error_after is None:
            return self.pieces
        return self.pieces[: self.error_after]

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def usage(self) -> tuple[int, int]:
        """(prompt, output) as the compatibility layers see them: 0 when Ollama omits them."""
        if self.omit_counts:
            return 0, 0
        return self.prompt_tokens, self.eval_count

    def metrics(self) -> JSONObj:
        """The timing and count fields of a final frame, in Ollama's order, zeros omitted."""
        load = 2_345_678
        prompt_eval = 150_000 * self.prompt_tokens + 1_000_000
        eval_ = 1_000_000 * self.eval_count + int(self.delay_s * 1e9) * self.eval_count
        total = max(load + prompt_eval + eval_ + 500_000, time.perf_counter_ns() - self.started_ns)
        out: JSONObj = {"total_duration": total, "load_duration": load}
        if not self.omit_counts:
            out["prompt_eval_count"] = self.prompt_tokens
        out["prompt_eval_duration"] = prompt_eval
        if not self.omit_counts and self.eval_count:
            out["eval_count"] = self.eval_count
        if eval_:
            out["eval_duration"] = eval_
        return out

    def context(self) -> list[int]:
        return [(i * 7919 + 128_000) % 128_256 for i in range(self.prompt_tokens + self.eval_count)]


@dataclass
class Renderer:
    """How one API family turns a plan into stream bytes."""

    content_type: str
    token: Callable[[int, str], bytes]
    done: Callable[[], bytes]
    error: Callable[[], bytes]
    head: Callable[[], bytes] | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)


def message_word_count(messages: list[Any]) -> int:
    """Words across chat messages whose content is a string or a list of text parts."""
    total = 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            total += word_count(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    total += word_count(part.get("text"))
    return total


def new_id(prefix: str, limit: int) -> str:
    return f"{prefix}{random.randrange(limit)}"
