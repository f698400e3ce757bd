"""What an inference body may carry: the top-level fields of each endpoint, the Ollama
``options`` a tenant may set, and the ceiling on output tokens.

* :data:`FIELDS`: an allowlist per endpoint. A field outside it — a debug switch such as
  ``_debug_render_only`` (which answers the rendered template and system prompt that
  ``/api/show`` hides), or anything Ollama may add later — is refused (400), not dropped, so a
  client learns at once. Field names are compared as Ollama's Go decoder matches them
  (:func:`gateway.gojson.fold`): ``"_DEBUG_RENDER_ONLY"`` is ``_debug_render_only``.
  The native endpoints list exactly the fields of Ollama's request structs (``api/types.go``)
  without the debug ones; the OpenAI- and Anthropic-compatible ones list the fields Ollama's
  middleware reads plus the documented fields of those APIs that Ollama ignores (what the
  official SDKs send, e.g. ``user``, ``n``, ``max_completion_tokens``).
* Ollama's ``options`` map is matched exactly by Go (``Options.FromMap``), so option names are
  compared as they are. A tenant may set the options in its ``allowed_options`` (default:
  :data:`DEFAULT_OPTIONS`, the sampling options); load-time options (``num_gpu``,
  ``num_batch``…) reload a model every tenant shares and are not in the default. Two options
  have their own setting instead: ``num_predict`` (clamped to the tenant's
  ``max_output_tokens``) and ``num_ctx`` (refused above the tenant's ``max_num_ctx``; refused
  outright when it has none). Names the backend does not know are refused too, unless the
  deployment lists them as inert (``NZ_INERT_OPTIONS``: the dev stack's mock knobs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway import gojson

# No request runs with more output tokens than this, whatever the tenant or request says.
OUTPUT_CEILING = 32_768

# The fields of Ollama's request structs, without the debug ones (api/types.go).
_NATIVE_COMMON = ("model", "stream", "format", "keep_alive", "options", "think", "truncate")
_NATIVE_CHAT = (*_NATIVE_COMMON, "messages", "tools", "shift", "logprobs", "top_logprobs")
_NATIVE_GENERATE = (
    *_NATIVE_COMMON,
    *("prompt", "suffix", "system", "template", "context", "raw", "images"),
    *("shift", "logprobs", "top_logprobs"),
)
_NATIVE_EMBED = ("model", "input", "keep_alive", "truncate", "dimensions", "options")
_NATIVE_EMBEDDINGS = ("model", "prompt", "keep_alive", "options")
# OpenAI's chat completions: what Ollama reads (openai/openai.go) ...
_OPENAI_CHAT = (
    *("model", "messages", "stream", "stream_options", "max_tokens", "seed", "stop"),
    *("temperature", "frequency_penalty", "presence_penalty", "top_p", "response_format"),
    *("tools", "reasoning", "reasoning_effort", "logprobs", "top_logprobs"),
    # ... and what OpenAI documents that Ollama ignores (the gateway caps max_completion_tokens)
    *("max_completion_tokens", "n", "user", "tool_choice", "parallel_tool_calls", "logit_bias"),
    *("metadata", "store", "service_tier", "modalities", "prediction", "verbosity"),
    *("prompt_cache_key", "safety_identifier", "web_search_options", "audio"),
    *("prompt_cache_retention", "prompt_cache_options", "moderation"),
    *("function_call", "functions"),
)
_OPENAI_COMPLETIONS = (
    *("model", "prompt", "frequency_penalty", "max_tokens", "presence_penalty", "seed"),
    *("stop", "stream", "stream_options", "temperature", "top_p", "suffix", "logprobs"),
    *("best_of", "echo", "logit_bias", "n", "user"),
)
_OPENAI_EMBEDDINGS = ("model", "input", "dimensions", "encoding_format", "user")
_OPENAI_RESPONSES = (
    *("model", "background", "conversation", "include", "input", "instructions"),
    *("max_output_tokens", "reasoning", "temperature", "text", "top_p", "truncation"),
    *("tools", "stream"),
    *("metadata", "parallel_tool_calls", "previous_response_id", "store", "tool_choice"),
    *("user", "service_tier", "max_tool_calls", "prompt_cache_key", "safety_identifier"),
    *("top_logprobs", "stream_options"),
)
_ANTHROPIC_MESSAGES = (
    *("model", "max_tokens", "messages", "system", "stream", "temperature", "top_p", "top_k"),
    *("stop_sequences", "tools", "tool_choice", "thinking", "metadata", "output_config"),
    "service_tier",
)
# Ollama's own keep_alive, which Ollama-aware clients also send on /v1/*: harmless there (the
# gateway clamps it wherever it appears, accounting/rewrite.py), so not refused.
_OLLAMA_EXTENSIONS = ("keep_alive",)
FIELDS: dict[str, frozenset[str]] = {
    "/api/chat": frozenset(_NATIVE_CHAT),
    "/api/generate": frozenset(_NATIVE_GENERATE),
    "/api/embed": frozenset(_NATIVE_EMBED),
    "/api/embeddings": frozenset(_NATIVE_EMBEDDINGS),
    "/v1/chat/completions": frozenset((*_OPENAI_CHAT, *_OLLAMA_EXTENSIONS)),
    "/v1/completions": frozenset((*_OPENAI_COMPLETIONS, *_OLLAMA_EXTENSIONS)),
    "/v1/embeddings": frozenset((*_OPENAI_EMBEDDINGS, *_OLLAMA_EXTENSIONS)),
    "/v1/responses": frozenset((*_OPENAI_RESPONSES, *_OLLAMA_EXTENSIONS)),
    "/v1/messages": frozenset(_ANTHROPIC_MESSAGES),
}
_FOLDED = {path: frozenset(gojson.fold(name) for name in names) for path, names in FIELDS.items()}

# Ollama's options (api/types.go: Options, then the load-time Runner options).
SAMPLING_OPTIONS = frozenset(
    {
        *("num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p"),
        *("repeat_last_n", "temperature", "repeat_penalty", "presence_penalty"),
        *("frequency_penalty", "stop"),
    }
)
LOAD_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict"}
)
OPTIONS = SAMPLING_OPTIONS | LOAD_OPTIONS
# Options with their own tenant setting; always allowed, within that setting.
GOVERNED = frozenset({"num_predict", "num_ctx"})
# What ``allowed_options`` may name, and its default.
SETTABLE_OPTIONS = OPTIONS - GOVERNED
DEFAULT_OPTIONS = SAMPLING_OPTIONS - GOVERNED


def allowed(path: str, body: Mapping[str, Any]) -> bool:
    """Every top-level field of ``body`` is one ``path`` documents (an endpoint without a
    table accepts none)."""
    names = _FOLDED.get(path)
    return names is not None and all(gojson.fold(key) in names for key in body)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def options_allowed(
    options: Mapping[str, Any],
    allowed_names: frozenset[str],
    max_num_ctx: int | None,
) -> bool:
    """The ``options`` map uses only allowed names, and ``num_ctx`` (if set) within
    ``max_num_ctx``. ``num_predict`` is always allowed: authz clamps it."""
    for name, value in options.items():
        if name == "num_predict":
            continue
        if name == "num_ctx":
            if max_num_ctx is None or not _number(value) or not 1 <= value <= max_num_ctx:
                return False
        elif name not in allowed_names:
            return False
    return True


def check_option_names(names: Iterable[str]) -> list[str]:
    """``allowed_options`` as given, deduplicated; raises ValueError naming what is wrong."""
    result = list(dict.fromkeys(names))
    governed = sorted(set(result) & GOVERNED)
    if governed:
        raise ValueError(
            f"{governed} cannot be listed in allowed_options: num_predict is governed by "
            "max_output_tokens, num_ctx by max_num_ctx"
        )
    unknown = sorted(set(result) - SETTABLE_OPTIONS)
    if unknown:
        known = ", ".join(sorted(SETTABLE_OPTIONS))
        raise ValueError(f"unknown options {unknown}: allowed_options takes {known}")
    return result


def inert_options(text: str) -> frozenset[str]:
    """``NZ_INERT_OPTIONS`` (comma separated): option names every tenant may send because the
    backend ignores them. Ollama's own options can never be inert."""
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    return names - OPTIONS
