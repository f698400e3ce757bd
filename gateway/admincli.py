"""The operator subcommands of ``neuronetz-gateway``: thin clients of the admin gRPC API.

They never touch the database; each builds one request, calls the API at ``--admin``
(``NZ_ADMIN_ADDR``, default 127.0.0.1:9004) with the token from ``--token``, ``NZ_ADMIN_TOKEN``
or the file ``NZ_ADMIN_TOKEN_FILE``, and prints the answer as JSON. Errors go to stderr as
``{"error": {"code": ..., "message": ...}}`` with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

DEFAULT_ADDR = "127.0.0.1:9004"
_LIMIT_FLAGS = {
    "rpm": "requests_per_minute",
    "tpm": "tokens_per_minute",
    "max_concurrent": "max_concurrent",
    "budget_daily": "budget_daily",
    "budget_monthly": "budget_monthly",
    "budget_total": "budget_total",
}
_PERIODS = ("daily", "monthly", "total")

Build = Callable[[argparse.Namespace, Any], tuple[str, Any]]


def _pb() -> Any:
    from protos.neuronetz.admin.v1 import admin_pb2

    return admin_pb2


def _token(args: argparse.Namespace) -> str:
    token: str = args.token or os.environ.get("NZ_ADMIN_TOKEN", "")
    path = os.environ.get("NZ_ADMIN_TOKEN_FILE")
    if not token and path:
        token = Path(path).read_text(encoding="utf-8").strip()
    return token


def to_json(message: Message) -> str:
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
        indent=2,
    )


def call(
    addr: str,
    token: str,
    method: str,
    request: Message,
    timeout_s: float = 15.0,
    wait_for_ready: bool = False,
) -> Any:
    """One AdminService call; raises grpc.RpcError. ``wait_for_ready``: wait (up to the
    timeout) for a server that is still starting instead of failing with UNAVAILABLE."""
    from protos.neuronetz.admin.v1 import admin_pb2_grpc

    with grpc.insecure_channel(addr) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        return getattr(stub, method)(
            request, metadata=metadata, timeout=timeout_s, wait_for_ready=wait_for_ready
        )


def _run(args: argparse.Namespace) -> int:
    build: Build = args.build
    pb = _pb()
    addr = args.admin or os.environ.get("NZ_ADMIN_ADDR") or DEFAULT_ADDR
    try:
        method, request = build(args, pb)
        response = call(addr, _token(args), method, request)
        if method == "ListKeys" and not args.page_size:
            # Follow every page: an operator asking for the keys wants all of them.
            while response.next_page_token:
                request.page_token = response.next_page_token
                more = call(addr, _token(args), method, request)
                response.keys.extend(more.keys)
                response.next_page_token = more.next_page_token
    except grpc.RpcError as exc:
        error = {"code": exc.code().name, "message": exc.details()}
        print(json.dumps({"error": error}), file=sys.stderr)
        return 1
    except (ValueError, json_format.ParseError) as exc:
        print(json.dumps({"error": {"code": "USAGE", "message": str(exc)}}), file=sys.stderr)
        return 2
    print(to_json(response))
    return 0


# -- request builders -----------------------------------------------------------------------


def _limits(args: argparse.Namespace, pb: Any) -> Any:
    values = {
        field: getattr(args, flag)
        for flag, field in _LIMIT_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    return pb.Limits(**values)


def _ceilings(args: argparse.Namespace, pb: Any) -> Any:
    ceilings = pb.Ceilings()
    if args.max_output_tokens is not None:
        ceilings.max_output_tokens = args.max_output_tokens
    if args.max_num_ctx is not None:
        ceilings.max_num_ctx = args.max_num_ctx
    if args.allow_option:
        ceilings.allowed_options.CopyFrom(pb.OptionList(options=args.allow_option))
    return ceilings


def _timestamp(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _target(args: argparse.Namespace) -> dict[str, str]:
    if args.key:
        return {"key": args.key}
    if args.tenant:
        return {"tenant": args.tenant}
    return {}


def _create_tenant(args: argparse.Namespace, pb: Any) -> tuple[str, Message]:
    return "CreateTenant", pb.CreateTenantRequest(
        name=args.name,
        allow_all=args.allow_all,
        allowed_models=pb.ModelList(models=args.model),
        allow_cloud=args.allow_cloud,
        limits=_limits(args, pb),
        ceilings=_ceilings(args, pb),
    )


def _create_key(args: argparse.Namespace, pb: Any) -> tuple[str, Message]:
    request = pb.CreateKeyRequest(
        tenant=args.tenant,
        name=args.name,
        scopes=[pb.Scope.Value(f"SCOPE_{s.upper()}") for s in args.scope],
        prompt_log=args.prompt_log,
        limits=_limits(args, pb),
        ceilings=_ceilings(args, pb),
    )
    if args.model:
        request.allowed_models.CopyFrom(pb.ModelList(models=args.model))
        request.allow_all = False
    if args.allow_all:
        request.allow_all = True
    if args.expires_at:
        request.expires_at.FromDatetime(_timestamp(args.expires_at))
    return "CreateKey", request


def _list_keys(args: argparse.Namespace, pb: Any) -> tuple[str, Message]:
    return "ListKeys", pb.ListKeysRequest(
        tenant=args.tenant or "",
        include_revoked=args.include_revoked,
        page_size=args.page_size or 0,
        page_token=args.page_token or "",
    )


def _revoke_key(args: argparse.Namespace, pb: Any) -> tuple[str, Message]:
    return "RevokeKey", pb.RevokeKeyRequest(key=args.key, reason=args.reason)


def _set_budget(args: argparse.Namespace, pb: Any) -> tuple[str, Message]:
    request = pb.SetBudgetRequest(period=pb.Period.Value(f"PERIOD_{args.period.upper()}"))
    for name, value in _target(args).items():
        setattr(request, name, value)
    if args.tokens is not None:
        request.tokens = args.tokens
    return "SetBudget", request


def _set_models(args: argparse.Namespace, pb: Any) -> tuple[str, Message]:
    mask = ["allow_all", "allowed_models"]
    if args.key:
        key_request = pb.UpdateKeyRequest(key=args.key)
        if not args.inherit:
            key_request.allow_all = args.allow_all
            key_request.allowed_models.CopyFrom(pb.ModelList(models=args.model))
        key_request.update_mask.paths.extend(mask)
        return "UpdateKey", key_request
    if args.inherit:
        raise ValueError("--inherit applies to keys only")
    tenant_request = pb.UpdateTenantRequest(
        tenant=args.tenant,
        allow_all=args.allow_all,
        allowed_models=pb.ModelList(models=args.model),
    )
    tenant_request.update_mask.paths.extend(mask)
    return "UpdateTenant", tenant_request


def _list_models(args: argparse.Namespace, pb: Any) -> tuple[str, Message]:
    target = _target(args)
    if target:
        return "GetEffectiveModels", pb.GetEffectiveModelsRequest(**target)
    return "ListModels", pb.ListModelsRequest(backend=args.backend or "")


def _show_usage(args: argparse.Namespace, pb: Any) -> tuple[str, Message]:
    request = pb.GetUsageRequest(**_target(args))
    if args.period:
        request.period = pb.Period.Value(f"PERIOD_{args.period.upper()}")
    if args.since:
        request.start.FromDatetime(_timestamp(args.since))
    if args.until:
        request.end.FromDatetime(_timestamp(args.until))
    for dim in args.by:
        request.group_by.append(pb.UsageDimension.Value(f"USAGE_DIMENSION_{dim.upper()}"))
    return "GetUsage", request


def _probe_backends(args: argparse.Namespace, pb: Any) -> tuple[str, Message]:
    request = pb.ProbeBackendsRequest()
    request.timeout.FromNanoseconds(int(args.timeout * 1e9))
    return "ProbeBackends", request


def _admin_call(args: argparse.Namespace, pb: Any) -> tuple[str, Message]:
    service = pb.DESCRIPTOR.services_by_name["AdminService"]
    method = service.methods_by_name.get(args.method)
    if method is None:
        raise ValueError(f"no method {args.method!r}; one of {', '.join(service.methods_by_name)}")
    request_class = getattr(pb, method.input_type.name)
    request = json_format.Parse(args.json, request_class())
    return args.method, request


# -- argparse -------------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--admin", help=f"admin API address (NZ_ADMIN_ADDR; {DEFAULT_ADDR})")
    common.add_argument(
        "--token", help="admin token (better: NZ_ADMIN_TOKEN or NZ_ADMIN_TOKEN_FILE)"
    )
    return common


def _limit_options(parser: argparse.ArgumentParser) -> None:
    for flag, field in _LIMIT_FLAGS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int, help=field)


def _ceiling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-output-tokens", type=int, help="output cap ceiling per request")
    parser.add_argument("--max-num-ctx", type=int, help="largest options.num_ctx allowed")
    parser.add_argument(
        "--allow-option",
        action="append",
        default=[],
        help="an Ollama option requests may set (repeat; replaces the sampling-options default)",
    )


def _target_options(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--tenant", help="tenant id or name")
    group.add_argument("--key", help="key id or prefix")


def add_subcommands(sub: Any) -> None:
    """Add the operator subcommands to the ``neuronetz-gateway`` parser."""
    common = _connection_options()

    def command(name: str, build: Build, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help_text)
        parser.set_defaults(func=_run, build=build, page_size=None)
        return parser

    p = command("create-tenant", _create_tenant, "create a tenant")
    p.add_argument("name")
    p.add_argument("--allow-all", action="store_true", help="every discovered model")
    p.add_argument("--model", action="append", default=[], help="an allowed model (repeat)")
    p.add_argument("--allow-cloud", action="store_true", help="allow :cloud models")
    _limit_options(p)
    _ceiling_options(p)

    p = command("create-key", _create_key, "create a key (the full key is printed once)")
    p.add_argument("tenant", help="tenant id or name")
    p.add_argument("--name", default="")
    p.add_argument("--scope", action="append", default=[], choices=["chat", "embeddings", "models"])
    p.add_argument("--model", action="append", default=[], help="own model list (repeat)")
    p.add_argument("--allow-all", action="store_true", help="every discovered model")
    p.add_argument("--prompt-log", action="store_true")
    p.add_argument("--expires-at", help="ISO 8601 time (UTC unless it says otherwise)")
    _limit_options(p)
    _ceiling_options(p)

    p = command("list-keys", _list_keys, "list keys (never their secrets)")
    p.add_argument("--tenant", help="tenant id or name")
    p.add_argument("--include-revoked", action="store_true")
    p.add_argument("--page-size", type=int, help="one page of this size (default: all keys)")
    p.add_argument("--page-token")

    p = command("revoke-key", _revoke_key, "revoke a key at once")
    p.add_argument("key", help="key id or prefix")
    p.add_argument("--reason", required=True)

    p = command("set-budget", _set_budget, "set or clear a token budget")
    _target_options(p, required=True)
    p.add_argument("--period", choices=_PERIODS, required=True)
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--tokens", type=int, help="tokens (in + out) per period")
    amount.add_argument("--clear", action="store_true", help="no budget (tenant) / inherit (key)")

    p = command("set-models", _set_models, "set the model policy of a tenant or key")
    _target_options(p, required=True)
    policy = p.add_mutually_exclusive_group(required=True)
    policy.add_argument("--allow-all", action="store_true", help="every discovered model")
    policy.add_argument("--model", action="append", default=[], help="an allowed model")
    policy.add_argument("--inherit", action="store_true", help="key: use the tenant's policy")

    p = command(
        "list-models",
        _list_models,
        "models per backend (name, URL, priority, live), or a tenant's/key's set",
    )
    _target_options(p, required=False)
    p.add_argument("--backend", help="one backend, by name or URL")

    p = command("show-usage", _show_usage, "tokens and requests per tenant/key/model")
    _target_options(p, required=False)
    p.add_argument("--period", choices=_PERIODS, help="the current day/month, or total")
    p.add_argument("--since", help="ISO 8601 start")
    p.add_argument("--until", help="ISO 8601 end (exclusive)")
    p.add_argument("--by", action="append", default=[], choices=["tenant", "key", "model"])

    p = command(
        "probe-backends",
        _probe_backends,
        "per backend (name, URL, priority): reachability, version, model count",
    )
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per backend")

    p = command("admin-call", _admin_call, "call any AdminService method with a JSON request")
    p.add_argument("method", help="e.g. GetTenant")
    p.add_argument("json", nargs="?", default="{}", help="the request as JSON")
