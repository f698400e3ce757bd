"""Which paths a route's match can take, judged against the gateway's endpoint table.

The allowlist is ``gateway.endpoints`` (what authz uses): a path is allowed when
``endpoints.lookup`` knows it for some method. Exact matches are looked up; a ``prefix`` is
allowed only under a templated endpoint's fixed part (``/v1/models/`` of
``/v1/models/{model}``), anything else can match paths the table does not have. Regexes and
path templates cannot be enumerated: they are tried on probe paths — Ollama's blocked
endpoints, a few unknown ones, and the table's own paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2

from gateway import endpoints

# Probes, not a second allowlist: Ollama's model-management endpoints (issue 18) and paths
# no endpoint has. Whether a probe is allowed is always endpoints.lookup's answer.
BLOCKED_PROBES = (
    "/api/pull",
    "/api/create",
    "/api/delete",
    "/api/copy",
    "/api/push",
    "/api/blobs/sha256:0123abcd",
)
UNKNOWN_PROBES = (
    "/",
    "/api",
    "/api/",
    "/api/unknown",
    "/api/chat/x",
    "/v1",
    "/v1/",
    "/v1/files",
    "/v1/unknown",
    "/admin",
    "/metrics",
)
_FIELDS = {"separated": "path_separated_prefix", "regex": "safe_regex", "template": "path_template"}
_SAMPLE_PARAM = "llama3"  # stands for a path parameter ({model}) in a templated endpoint


@cache
def _all_endpoints() -> tuple[endpoints.Endpoint, ...]:
    return (*endpoints.ENDPOINTS.values(), endpoints.MODEL_DETAIL)


@cache
def _methods() -> frozenset[str]:
    return frozenset(e.method for e in _all_endpoints())


def allowed(path: str) -> bool:
    """Whether ``path`` is an endpoint of the table (for any method)."""
    return any(endpoints.lookup(method, path) is not None for method in _methods())


@cache
def template_prefixes() -> tuple[str, ...]:
    """The fixed part of each templated endpoint (``/v1/models/``): every path below it is
    the endpoint's."""
    return tuple(e.path.split("{", 1)[0] for e in _all_endpoints() if "{" in e.path)


def sample(endpoint: endpoints.Endpoint) -> str:
    return re.sub(r"\{[^}]*\}", _SAMPLE_PARAM, endpoint.path)


@dataclass(frozen=True, slots=True)
class PathMatch:
    kind: str  # path, prefix, separated, regex, template, any
    value: str
    case_sensitive: bool = True
    note: str = ""
    original: str = ""  # a path template as written (value holds its regex)

    def describe(self) -> str:
        """As the route spells it: ``prefix '/api/'``."""
        if self.kind == "any":
            return self.note
        return f"{_FIELDS.get(self.kind, self.kind)} {(self.original or self.value)!r}"

    def matches(self, path: str) -> bool:
        value, probe = self.value, path
        if not self.case_sensitive:
            value, probe = value.lower(), probe.lower()
        if self.kind == "path":
            return probe == value
        if self.kind == "prefix":
            return probe.startswith(value)
        if self.kind == "separated":
            return probe == value or probe.startswith(value + "/")
        if self.kind in ("regex", "template"):
            flags = 0 if self.case_sensitive else re.IGNORECASE
            return re.fullmatch(self.value, path, flags) is not None
        return True  # any: a match the guard cannot read could take any path

    def unlisted(self) -> list[str]:
        """Paths this match can take that the endpoint table does not have (empty: safe)."""
        if self.kind == "path":
            return [] if allowed(self.value) else [self.value]
        if self.kind == "prefix" and self.case_sensitive:
            if any(self.value.startswith(t) for t in template_prefixes()):
                return []
            return _unlisted_of(self, (self.value + "x",))
        if self.kind == "separated" and self.case_sensitive:
            below = self.value + "/"
            if allowed(self.value) and any(below.startswith(t) for t in template_prefixes()):
                return []
            return _unlisted_of(self, (self.value, below + "x"))
        return _unlisted_of(self, ())

    def endpoints(self) -> list[endpoints.Endpoint]:
        """The table's endpoints this match can take."""
        return [e for e in _all_endpoints() if self.matches(sample(e))]


def _unlisted_of(match: PathMatch, extra: tuple[str, ...]) -> list[str]:
    probes = (*BLOCKED_PROBES, *UNKNOWN_PROBES, *extra)
    found: list[str] = []
    for probe in probes:
        if probe not in found and match.matches(probe) and not allowed(probe):
            found.append(probe)
    if match.kind == "any" and not found:
        found.append("any path")
    return found


def path_match(match: rc.RouteMatch) -> PathMatch:
    """The path part of a route's match (headers, metadata and the like only narrow it)."""
    case = not match.HasField("case_sensitive") or match.case_sensitive.value
    which = match.WhichOneof("path_specifier")
    if which == "path":
        return PathMatch("path", match.path, case)
    if which == "prefix":
        return PathMatch("prefix", match.prefix, case)
    if which == "path_separated_prefix":
        return PathMatch("separated", match.path_separated_prefix, case)
    if which == "safe_regex":
        regex = match.safe_regex.regex
        try:
            re.compile(regex)
        except re.error:
            return PathMatch("any", regex, case, f"regex {regex!r} (unreadable here)")
        return PathMatch("regex", regex, case)
    if which == "path_match_policy":
        config = uri_template_match_pb2.UriTemplateMatchConfig()
        if match.path_match_policy.typed_config.Unpack(config):
            template = config.path_template
            return PathMatch("template", template_regex(template), case, "", template)
        return PathMatch("any", "", case, "a path_match_policy the guard cannot read")
    return PathMatch("any", "", case, f"a {which or 'missing'} path match")


def template_regex(template: str) -> str:
    """An Envoy URI template (``/v1/{name}/**``) as a regex over whole paths."""
    parts: list[str] = []
    for segment in template.split("/"):
        variable = re.fullmatch(r"\{[^}=]*(?:=([^}]*))?\}", segment)
        glob = variable.group(1) if variable is not None else segment
        if variable is not None and glob is None:
            parts.append("[^/]+")
        elif glob == "**":
            parts.append(".*")
        elif glob == "*":
            parts.append("[^/]+")
        else:
            parts.append(re.escape(glob))
    return "/".join(parts)
