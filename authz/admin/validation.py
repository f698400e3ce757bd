"""What a valid tenant or key looks like: names, free text, models, scopes, limits and body
ceilings. Each check returns the cleaned value or raises :class:`InvalidArgument` with a
message an operator can act on (never repeating a secret)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from authz import fields
from authz.admin.columns import SCOPES, TENANT_LIMIT_COLUMNS
from authz.admin.errors import InvalidArgument

_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
_MAX_LIMIT = 1 << 62
_INT32_COLUMNS = frozenset(
    {
        *("requests_per_minute", "tokens_per_minute", "max_concurrent"),
        *TENANT_LIMIT_COLUMNS[6:],
        "max_num_ctx",
    }
)
_AT_LEAST_ONE = frozenset({"default_max_tokens", "max_output_tokens", "max_num_ctx"})


def check_tenant_name(name: str) -> str:
    if not _TENANT_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid tenant name {name!r}: 1-63 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def check_text(what: str, value: str, max_chars: int) -> str:
    """A free-text field (a key's name, a reason): at most ``max_chars`` characters and no
    control character (C0, DEL, C1: a NUL Postgres cannot store, line breaks and escapes that
    forge log lines or rewrite a terminal). The message never repeats the value."""
    if len(value) > max_chars:
        raise InvalidArgument(f"{what} is longer than {max_chars} characters")
    for position, char in enumerate(value):
        if unicodedata.category(char) == "Cc":
            raise InvalidArgument(
                f"{what} must not contain control characters"
                f" (U+{ord(char):04X} at position {position})"
            )
    return value


def check_models(models: Iterable[str]) -> list[str]:
    result: list[str] = []
    for model in models:
        if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
            raise InvalidArgument(f"invalid model name {model!r}")
        if model not in result:
            result.append(model)
    return result


def check_scopes(scopes: Iterable[str]) -> list[str]:
    result = list(dict.fromkeys(scopes))
    unknown = [s for s in result if s not in SCOPES]
    if unknown:
        raise InvalidArgument(f"unknown scopes {unknown}: use {', '.join(SCOPES)}")
    if not result:
        raise InvalidArgument("a key needs at least one scope")
    return result


def check_options(names: Any) -> list[str]:
    """``allowed_options``: a list of Ollama option names (see :mod:`authz.fields`)."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise InvalidArgument("allowed_options must be a list of option names")
    listed = list(names)
    if not all(isinstance(n, str) for n in listed):
        raise InvalidArgument("allowed_options must be a list of option names")
    try:
        return fields.check_option_names(listed)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def check_limits(limits: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    allowed_set = set(allowed)
    unknown = sorted(set(limits) - allowed_set)
    if unknown:
        raise InvalidArgument(f"unknown limits: {unknown}")
    result: dict[str, Any] = {}
    for name, value in limits.items():
        if value is None:
            result[name] = None
            continue
        if name == "allowed_options":
            result[name] = check_options(value)
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"{name} must be an integer")
        top = (1 << 31) - 1 if name in _INT32_COLUMNS else _MAX_LIMIT
        if name == "max_output_tokens":
            top = fields.OUTPUT_CEILING
        if not 0 <= value <= top:
            raise InvalidArgument(f"{name} must be between 0 and {top}, not {value}")
        if name in _AT_LEAST_ONE and value == 0:
            raise InvalidArgument(f"{name} must be at least 1")
        result[name] = value
    low, high = result.get("keep_alive_min_s"), result.get("keep_alive_max_s")
    if low is not None and high is not None and high < low:
        raise InvalidArgument("keep_alive_max_s must not be below keep_alive_min_s")
    return result
