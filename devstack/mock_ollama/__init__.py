"""A mock Ollama HTTP server: the model server of the tests and of the local dev stack.

It answers the Ollama native API (``/api/*``), the OpenAI-compatible API (``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``, ``/v1/models``, ``/v1/responses``) and the
Anthropic-compatible ``/v1/messages`` with *honest* frames: the field names, key order, content
types, NDJSON/SSE framing and error bodies of Ollama 0.12+, and token counts that follow one fixed
rule, so a gateway's accounting can be checked exactly.

Counting rule
-------------
* Prompt tokens (``prompt_eval_count``, ``usage.prompt_tokens``, ``usage.input_tokens``): the
  number of whitespace-separated words across all message contents (``/api/chat``,
  ``/v1/chat/completions``, ``/v1/messages`` incl. ``system``, ``/v1/responses`` incl.
  ``instructions``), or across ``prompt`` + ``system`` (``/api/generate``, ``/v1/completions``);
  minimum 1.
* Output tokens (``eval_count``, ``usage.completion_tokens``, ``usage.output_tokens``):
  ``options.num_predict`` (native), ``max_tokens`` / ``max_completion_tokens`` (OpenAI chat),
  ``max_tokens`` (OpenAI completions, Anthropic), ``max_output_tokens`` (Responses) when it is an
  int >= 0, else 8.
* The output text is ``token0 token1 token2 ...``: one word per streamed content frame, so the
  number of words in the content always equals the output token count.
* Embeddings: ``prompt_eval_count`` / ``usage.prompt_tokens`` is the word count of all inputs.

Control knobs (in ``options`` of the request body; on ``/v1/*`` bodies a top-level ``options``
object is read too, a field real Ollama ignores there):

* ``mock_error_after`` (int n): stream n content frames (all of them if there are fewer), then an
  error frame instead of the done frame and end the stream, still HTTP 200: native
  ``{"error":"mock failure"}``, OpenAI ``data: {"error":{...}}``, Anthropic/Responses
  ``event: error``. Non-streaming requests answer HTTP 500 with the error body.
* ``mock_omit_counts`` (bool): the final frame lacks ``prompt_eval_count`` and ``eval_count`` (real
  Ollama omits them e.g. for a fully cached prompt); the OpenAI/Anthropic usage then reports 0,
  exactly as Ollama's compatibility layers do when the metrics are missing.
* ``mock_frame_delay_ms`` (int): pause between streamed frames (the default is the server's
  ``--frame-delay-s``), for tests that need a stream to be slow or cut mid-way. The request
  header ``x-mock-frame-delay-ms`` does the same where the body may carry no ``options`` (the
  gateway admits only the fields each endpoint documents); the body's knob wins.

Models: a fresh mock has ``llama3.2:latest``, ``qwen2.5:0.5b``, ``nomic-embed-text:latest``
(embeddings only) and ``gpt-oss:20b-cloud``, a cloud model (Ollama's ``-cloud`` tag): listed as
Ollama lists one (``remote_model``, ``remote_host``, a 384-byte stub), so a tenant's cloud
opt-in can be tested; the mock answers it locally like the others.

``--models a,b:7b`` hosts exactly those models instead (a default model keeps its entry, any
other name is a plausibly pulled one): several mocks then play several backends, each with its
own models; a model a mock does not host gets Ollama's 404 (``model "x" not found, try pulling it
first``, or the OpenAI/Anthropic error object on ``/v1/*``).

Introspection: ``GET /_mock/requests`` lists the last 200 requests received (method, path,
lower-case headers, parsed body, raw body), so tests can prove what reached the model server.
``GET /_mock/info`` says which backend the mock plays (``--name``) and which models it hosts; a
named mock sends ``x-mock-backend: <name>`` on every answer. ``POST /_mock/fault``
(``{"status": 500}``, ``{"delay_s": 2.5}``, ``{}`` to heal) breaks or slows every later request
outside ``/_mock`` — or, with ``"paths"``, only requests to those — so a test can fail one
backend of several while its port stays open.

Ollama quirks kept on purpose
-----------------------------
* Counts are Go ``omitempty`` fields: a zero count is omitted (``num_predict: 0`` gives a final
  frame without ``eval_count``).
* ``/api/chat`` with no messages and ``/api/generate`` with an empty prompt only load the model:
  one JSON object with ``"done_reason":"load"`` and no counts.
* ``done_reason`` is ``"stop"`` (the mock's output always ends on its own).
* ``/v1/completions`` streaming with ``include_usage`` puts a zero ``usage`` on every chunk, then
  a usage chunk with ``"choices":[]``; ``/v1/chat/completions`` adds only the usage chunk.
* OpenAI-shape errors use ``invalid_request_error`` (400), ``not_found_error`` (404) and
  ``api_error`` (others), as ``openai.NewError`` does.
* Anthropic ``message_start`` has ``output_tokens: 0``; the final counts arrive in
  ``message_delta.usage`` (``input_tokens`` and ``output_tokens``).

Nothing here logs request headers or bodies; they are only kept in memory
(``MockOllama.requests``) for the tests to inspect.

Modules
-------
* ``models``: the model catalogue (``ModelInfo``, the default models, name normalisation);
  ``state``: ``MockOllama`` (models, request log, disconnects).
* ``native`` (``/api/*``), ``openai_compat`` (``/v1/chat/completions``, ``/v1/completions``,
  ``/v1/embeddings``, ``/v1/models``), ``openai_responses`` (``/v1/responses``),
  ``anthropic_messages`` (``/v1/messages``): one class of handlers per API surface.
* ``surface``: what they share (request body, model lookup, plan, streaming pump);
  ``generation``: the counting rule and the knobs; ``vectors``: pseudo-embeddings;
  ``wire``: JSON/NDJSON/SSE encoding; ``go_json``: bodies read as Go's decoder reads them.
* ``server``: the aiohttp app (routing, request log, error shapes), ``start`` and ``main``;
  ``python -m devstack.mock_ollama [--host H] [--port P] [--frame-delay-s S] [--name N]
  [--models M1,M2]`` runs it.
"""

from devstack.mock_ollama.generation import DEFAULT_OUTPUT_TOKENS, MOCK_ERROR
from devstack.mock_ollama.models import (
    ModelInfo,
    default_models,
    hosted_models,
    normalize_model_name,
)
from devstack.mock_ollama.native import OLLAMA_VERSION
from devstack.mock_ollama.server import (
    BACKEND_HEADER,
    FAULT_MESSAGE,
    bound_port,
    create_app,
    main,
    start,
)
from devstack.mock_ollama.state import Fault, MockOllama, RecordedRequest
from devstack.mock_ollama.vectors import EMBEDDING_DIM

__all__ = [
    "BACKEND_HEADER",
    "DEFAULT_OUTPUT_TOKENS",
    "EMBEDDING_DIM",
    "FAULT_MESSAGE",
    "MOCK_ERROR",
    "OLLAMA_VERSION",
    "Fault",
    "MockOllama",
    "ModelInfo",
    "RecordedRequest",
    "bound_port",
    "create_app",
    "default_models",
    "hosted_models",
    "main",
    "normalize_model_name",
    "start",
]
