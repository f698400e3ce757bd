"""Read an Envoy config file into Envoy's typed messages (``Bootstrap`` of ``xds-protos``).

The YAML is read with ``yaml.safe_load`` (anchors and merge keys resolved), every ``@type``
is resolved by importing its package from ``xds-protos``, then
``google.protobuf.json_format.ParseDict`` builds the typed config: a misspelt field or a
wrong value is an error, as in Envoy. A ``@type`` the installed protos do not know cannot be
checked: it becomes a violation of its own and an empty message in the typed config, so the
rest of the file is still checked.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import descriptor_pool, json_format

from gateway.envoyguard.violations import Violation
from gateway.envoyguard.yamlpath import join

_TYPE_PREFIX = "type.googleapis.com/"
_EMPTY = _TYPE_PREFIX + "google.protobuf.Empty"
# Only the API packages xds-protos ships are imported to resolve a @type.
_IMPORTABLE = re.compile(r"(envoy|xds|udpa|validate|google\.protobuf)(\.[a-z_][a-z0-9_]*)*")


class LoadError(Exception):
    """The file cannot be read as an Envoy config (exit 2); the message is one line."""


@dataclass
class Loaded:
    file: str
    raw: dict[str, Any]  # the YAML as loaded (aliases unshared)
    bootstrap: bootstrap_pb2.Bootstrap
    violations: list[Violation] = field(default_factory=list)


def load(path: Path) -> Loaded:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadError(f"{name}: cannot read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LoadError(f"{name}: not YAML: {_one_line(str(exc))}") from exc
    return load_dict(name, data)


def load_dict(name: str, data: object) -> Loaded:
    """``data`` (a loaded YAML document) as a typed ``Bootstrap``."""
    if not isinstance(data, dict):
        raise LoadError(f"{name}: not an Envoy bootstrap config (a YAML mapping)")
    try:
        # Through JSON: unshares YAML aliases and refuses what JSON (and Envoy) cannot hold.
        raw: dict[str, Any] = json.loads(json.dumps(data))
    except (TypeError, ValueError) as exc:
        raise LoadError(f"{name}: not JSON-compatible YAML: {_one_line(str(exc))}") from exc
    violations: list[Violation] = []
    typed = json.loads(json.dumps(raw))
    _resolve_types(name, typed, "", violations)
    bootstrap = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(typed, bootstrap)
    except json_format.ParseError as exc:
        raise LoadError(f"{name}: not a valid Envoy config: {_one_line(str(exc))}") from exc
    return Loaded(name, raw, bootstrap, violations)


def _resolve_types(name: str, node: object, path: str, found: list[Violation]) -> None:
    if isinstance(node, list):
        for index, item in enumerate(node):
            _resolve_types(name, item, join(path, index), found)
        return
    if not isinstance(node, dict):
        return
    type_url = node.get("@type")
    if isinstance(type_url, str) and not known_type(type_url):
        found.append(
            Violation(
                name,
                path,
                "X-cannot-check",
                f"cannot check: unknown @type {type_url!r} (not in the installed xds-protos)",
                "use a type of Envoy's v3 API (check the spelling), or upgrade xds-protos",
            )
        )
        node.clear()
        node["@type"] = _EMPTY
        return
    for key, value in node.items():
        _resolve_types(name, value, join(path, key), found)


def known_type(type_url: str) -> bool:
    """Whether the message a ``type.googleapis.com/…`` URL names can be parsed (its module
    is imported on the way)."""
    full = type_url.rpartition("/")[2]
    pool = descriptor_pool.Default()
    if _find(pool, full):
        return True
    package = full.rpartition(".")[0]
    while package and _IMPORTABLE.fullmatch(package):
        if _import_package(package) and _find(pool, full):
            return True
        package = package.rpartition(".")[0]
    return False


def _find(pool: descriptor_pool.DescriptorPool, full: str) -> bool:
    try:
        pool.FindMessageTypeByName(full)
    except KeyError:
        return False
    return True


def _import_package(package: str) -> bool:
    try:
        module = importlib.import_module(package)
    except ImportError:
        return False
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")
    return True


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
