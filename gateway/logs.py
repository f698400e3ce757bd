"""Structured JSON logs. Secrets never reach a log line: known secret fields are redacted.

Every line logged while a request is handled carries its ``request_id`` (Envoy's
``x-request-id``, the audit row's and the access log's): the gRPC edges wrap each Check,
ShouldRateLimit or ext_proc stream in :func:`request`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

_SECRET_FIELDS = frozenset(
    {"authorization", "api_key", "key", "secret", "token", "admin_token", "password", "prompt"}
)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event):
        if name.lower() in _SECRET_FIELDS:
            event[name] = "[redacted]"
    return event


def configure(service: str, level: str = "info") -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get(name: str) -> Any:
    return structlog.get_logger(name)


@contextmanager
def request(request_id: str) -> Iterator[None]:
    """Bind ``request_id`` to every log line of this task until the block ends (nothing bound
    for an empty id). contextvars are per task: concurrent requests never see each other's."""
    if not request_id:
        yield
        return
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
