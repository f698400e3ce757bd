"""The Ollama backends: name, URL, priority and the headers Envoy adds upstream (credentials).

Zero configuration: ``NZ_OLLAMA_URLS`` (or ``OLLAMA_URL``) names one backend or several, in
priority order. With ``NZ_BACKENDS_FILE`` a YAML (or JSON) file names them::

    backends:
    - name: gpu                       # names the backend in metrics, audit rows, the admin API
      url: http://gpu-box:11434
      priority: 0                     # lower first; equal priorities share the load
    - name: cloud
      url: https://ollama.com
      priority: 1
      headers:                        # added by Envoy upstream; a client can neither see nor set
        authorization: { file: /run/secrets/ollama-cloud }   # or { env: OLLAMA_CLOUD_AUTH }

Headers: ``authorization`` and ``x-api-key`` (:data:`CREDENTIAL_HEADERS`).

A header's value is read from a file (trailing newline dropped) or an environment variable,
never written in the file itself: the file can live in a ConfigMap, the secret in a Secret.
Values are :class:`pydantic.SecretStr`: they print as ``**********``. Any error names the
backend and the field, never a value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import SecretStr

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
# The headers a backend may have Envoy add: envoy.yaml's upstream header_mutation sends each
# from the endpoint's metadata (authz/eds.py). Adding one here means adding it there.
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


class BackendsError(ValueError):
    """The backends configuration cannot be used (the service does not start)."""


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    url: str  # scheme://host[:port], no path, no trailing slash
    priority: int = 0
    headers: dict[str, SecretStr] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    def upstream_headers(self) -> dict[str, str]:
        """The headers' values, for the one place that sends them (discovery, Envoy's EDS)."""
        return {name: value.get_secret_value() for name, value in self.headers.items()}


def from_urls(urls: list[str]) -> tuple[Backend, ...]:
    """``NZ_OLLAMA_URLS``: one backend named ``ollama``, or ``ollama-1``… in priority order."""
    if len(urls) == 1:
        return (Backend("ollama", _url(urls[0], "ollama"), 0),)
    return tuple(
        Backend(f"ollama-{i}", _url(url, f"ollama-{i}"), i - 1) for i, url in enumerate(urls, 1)
    )


def load_file(path: Path, environ: dict[str, str] | None = None) -> tuple[Backend, ...]:
    env = dict(os.environ) if environ is None else environ
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BackendsError(f"backends file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        # The problem and where, never PyYAML's whole message: it quotes the offending line,
        # which may hold a credential written in the file by mistake.
        raise BackendsError(f"backends file {path}: not YAML{_yaml_problem(exc)}") from exc
    entries = document.get("backends") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BackendsError(f"backends file {path}: needs a non-empty list 'backends'")
    found = tuple(_backend(entry, index, env) for index, entry in enumerate(entries))
    names = [b.name for b in found]
    for name in names:
        if names.count(name) > 1:
            raise BackendsError(f"backend {name!r} is named twice")
    return found


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return ""
    mark = exc.problem_mark
    return f" ({exc.problem}, line {mark.line + 1} column {mark.column + 1})"


def _backend(entry: Any, index: int, env: dict[str, str]) -> Backend:
    where = f"backends[{index}]"
    if not isinstance(entry, dict):
        raise BackendsError(f"{where}: expected a mapping with name and url")
    unknown = set(entry) - {"name", "url", "priority", "headers"}
    if unknown:
        raise BackendsError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BackendsError(f"{where}: name must be lowercase letters, digits and '-' (1-40)")
    where = f"backend {name!r}"
    priority = entry.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 127:
        raise BackendsError(f"{where}: priority must be an integer from 0 to 127")
    url = entry.get("url")
    if not isinstance(url, str):
        raise BackendsError(f"{where}: url is required")
    headers = entry.get("headers") or {}
    if not isinstance(headers, dict):
        raise BackendsError(f"{where}: headers must be a mapping of header name to a source")
    return Backend(
        name,
        _url(url, name),
        priority,
        {
            _header_name(h, where): _secret(src, f"{where} header {h!r}", env)
            for h, src in headers.items()
        },
    )


def _url(url: str, name: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendsError(f"backend {name!r}: url must be http:// or https:// with a host")
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username:
        raise BackendsError(f"backend {name!r}: url must be scheme://host[:port] only")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise BackendsError(f"backend {name!r}: bad port in url") from exc
    return f"{parts.scheme}://{parts.netloc}"


def _header_name(name: Any, where: str) -> str:
    lowered = name.lower() if isinstance(name, str) else ""
    if lowered not in CREDENTIAL_HEADERS:
        allowed = ", ".join(CREDENTIAL_HEADERS)
        raise BackendsError(f"{where}: header {name!r} cannot be set (allowed: {allowed})")
    return lowered


def _secret(source: Any, where: str, env: dict[str, str]) -> SecretStr:
    if not isinstance(source, dict) or len(source) != 1 or not {"file", "env"} & set(source):
        raise BackendsError(f"{where}: the value comes from {{file: PATH}} or {{env: NAME}}")
    if "file" in source:
        path = Path(str(source["file"]))
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise BackendsError(f"{where}: file {path}: {exc.strerror or exc}") from exc
    else:
        variable = str(source["env"])
        if variable not in env:
            raise BackendsError(f"{where}: environment variable {variable} is not set")
        value = env[variable]
    if not value or any(c in value for c in "\r\n\0"):
        raise BackendsError(f"{where}: the value is empty or spans lines")
    return SecretStr(value)


def configured(backends_file: str, ollama_urls: list[str]) -> tuple[Backend, ...]:
    """The backends of these settings: the file when one is named, else the URLs."""
    if backends_file:
        return load_file(Path(backends_file))
    if not ollama_urls:
        raise BackendsError("no backend: set NZ_OLLAMA_URLS or NZ_BACKENDS_FILE")
    return from_urls(ollama_urls)


def write_file(backends: list[dict[str, Any]], path: Path) -> Path:
    """A backends file (the dev stack and the tests write theirs with this)."""
    path.write_text(yaml.safe_dump({"backends": backends}, sort_keys=False), encoding="utf-8")
    return path
