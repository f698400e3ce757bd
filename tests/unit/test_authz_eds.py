"""Envoy's endpoints of the ``ollama`` cluster: the assignment authz builds from discovery, and
the EDS stream as Envoy drives it (request, ACK, a change, NACK, another resource)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from google.protobuf import json_format
from pydantic import SecretStr

from authz import eds
from authz.discovery import Discovery
from gateway.backends import Backend
from gateway.storage import redis_client
from tests.unit.backend import serve_models

_QUIET_S = 0.3  # how long "Envoy gets nothing" is watched
_PROMPT_S = 1.0  # how long a response may take


def _endpoints(cla: Any) -> list[dict[str, Any]]:
    """Each endpoint as Envoy reads it: level, hostname, address, port and metadata."""
    found = []
    for locality in cla.endpoints:
        for lb in locality.lb_endpoints:
            socket = lb.endpoint.address.socket_address
            found.append(
                {
                    "level": locality.priority,
                    "hostname": lb.endpoint.hostname,
                    "address": socket.address,
                    "port": socket.port_value,
                    "metadata": {
                        key: json_format.MessageToDict(value)
                        for key, value in lb.metadata.filter_metadata.items()
                    },
                }
            )
    return found


def _by_place(endpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(endpoints, key=lambda e: (e["level"], e["address"]))


# -- the assignment ------------------------------------------------------------------------


def test_priorities_become_levels_without_gaps_and_metadata_routes_by_model() -> None:
    cloud_key = "Bearer cloud-token"
    backends = (
        Backend("b5", "http://10.0.0.5:11434", 5),
        Backend("b0", "http://10.0.0.1:11434", 0),
        Backend(
            "cloud",
            "https://ollama.com",
            5,
            {"authorization": SecretStr(cloud_key), "x-api-key": SecretStr("k1")},
        ),
        Backend("b9", "http://10.0.0.9:8080", 9),
    )
    models = {
        "http://10.0.0.5:11434": frozenset({"qwen:0.5b", "llama3:latest"}),
        "http://10.0.0.1:11434": frozenset({"llama3:latest"}),
        # b9's list expired: it is in no model's subset
        "https://ollama.com": frozenset({"gpt-oss:120b"}),
    }
    addresses = {
        "b5": ("10.0.0.5",),
        "b0": ("10.0.0.1",),
        "cloud": ("1.2.3.4", "5.6.7.8"),
        "b9": ("10.0.0.9",),
    }
    cla = eds.assignment(backends, models, addresses)
    assert cla.cluster_name == "ollama"
    assert sorted(locality.priority for locality in cla.endpoints) == [0, 1, 2]
    expected: list[dict[str, Any]] = [
        {
            "level": 0,
            "hostname": "10.0.0.1",
            "address": "10.0.0.1",
            "port": 11434,
            "metadata": {
                "envoy.lb": {"model": ["llama3:latest"]},
                "nz.backend": {"name": "b0"},
            },
        },
        *(
            {
                "level": 1,
                "hostname": "ollama.com",
                "address": ip,
                "port": 443,
                "metadata": {
                    "envoy.lb": {"model": ["gpt-oss:120b"]},
                    "nz.backend": {"name": "cloud", "authorization": cloud_key, "x-api-key": "k1"},
                    "envoy.transport_socket_match": {"tls": True},
                },
            }
            for ip in ("1.2.3.4", "5.6.7.8")
        ),
        {
            "level": 1,
            "hostname": "10.0.0.5",
            "address": "10.0.0.5",
            "port": 11434,
            "metadata": {
                "envoy.lb": {"model": ["llama3:latest", "qwen:0.5b"]},
                "nz.backend": {"name": "b5"},
            },
        },
        {
            "level": 2,
            "hostname": "10.0.0.9",
            "address": "10.0.0.9",
            "port": 8080,
            "metadata": {"nz.backend": {"name": "b9"}},
        },
    ]
    assert _by_place(_endpoints(cla)) == _by_place(expected)


def test_a_backend_with_an_empty_live_list_is_in_no_subset() -> None:
    backends = (Backend("idle", "http://10.0.0.2:11434"),)
    cla = eds.assignment(backends, {"http://10.0.0.2:11434": frozenset()}, {"idle": ("10.0.0.2",)})
    (endpoint,) = _endpoints(cla)
    assert endpoint["metadata"] == {"nz.backend": {"name": "idle"}}


def test_an_unresolved_backend_has_no_endpoint_and_its_level_stays_empty() -> None:
    """Envoy wants levels 0..n without gaps: the middle level is there, with no endpoint."""
    backends = (
        Backend("first", "http://10.0.0.1:11434", 0),
        Backend("unresolved", "http://gpu-box:11434", 3),
        Backend("last", "http://10.0.0.3:11434", 7),
    )
    cla = eds.assignment(backends, {}, {"first": ("10.0.0.1",), "last": ("10.0.0.3",)})
    levels = {locality.priority: len(locality.lb_endpoints) for locality in cla.endpoints}
    assert levels == {0: 1, 1: 0, 2: 1}
    assert [e["metadata"]["nz.backend"]["name"] for e in _endpoints(cla)] == ["first", "last"]


def test_nothing_resolved_is_an_assignment_without_endpoints() -> None:
    cla = eds.assignment((Backend("gpu", "http://gpu-box:11434"),), {}, {})
    assert (cla.cluster_name, len(cla.endpoints)) == ("ollama", 0)


def test_a_version_is_the_same_for_the_same_assignment_and_moves_with_it() -> None:
    backends = (Backend("a", "http://10.0.0.1:11434"), Backend("b", "http://10.0.0.2:11434", 1))
    addresses: dict[str, tuple[str, ...]] = {"a": ("10.0.0.1",), "b": ("10.0.0.2",)}
    models = {"http://10.0.0.1:11434": frozenset({"llama3:latest", "qwen:0.5b", "phi3:mini"})}
    first = eds.response(eds.assignment(backends, models, addresses))
    again = eds.response(eds.assignment(backends, dict(models), dict(addresses)))
    assert first.version_info == again.version_info
    assert first.nonce == first.version_info
    assert first.type_url == eds.TYPE_URL
    assert first.resources[0].type_url == eds.TYPE_URL
    fewer = {"http://10.0.0.1:11434": frozenset({"llama3:latest"})}
    moved: dict[str, tuple[str, ...]] = {"a": ("10.0.0.1",), "b": ("10.0.0.22",)}
    versions = {
        first.version_info,
        eds.response(eds.assignment(backends, fewer, addresses)).version_info,
        eds.response(eds.assignment(backends, models, moved)).version_info,
    }
    assert len(versions) == 3


# -- the stream, as Envoy drives it --------------------------------------------------------


class _Envoy:
    """An EDS client: requests go in through a queue, responses are collected as they come."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        stub = eds_pb2_grpc.EndpointDiscoveryServiceStub(channel)
        self._call = stub.StreamEndpoints(self._send())
        self._reader = asyncio.create_task(self._read())

    async def _send(self) -> AsyncIterator[Any]:
        while (request := await self.requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        async for reply in self._call:
            await self.responses.put(reply)

    def ask(self, *names: str, version: str = "", nonce: str = "", error: str = "") -> None:
        request = discovery_pb2.DiscoveryRequest(
            version_info=version,
            resource_names=list(names),
            type_url=eds.TYPE_URL,
            response_nonce=nonce,
        )
        if error:
            request.error_detail.message = error
        self.requests.put_nowait(request)

    async def reply(self) -> Any:
        return await asyncio.wait_for(self.responses.get(), _PROMPT_S)

    async def silence(self) -> None:
        with pytest.raises(TimeoutError):
            reply = await asyncio.wait_for(self.responses.get(), _QUIET_S)
            pytest.fail(f"unexpected response {reply.version_info}")

    async def close(self) -> None:
        self.requests.put_nowait(None)
        self._call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def _models_of(reply: Any) -> dict[str, list[str] | None]:
    """Backend name → the models its endpoints route (None: in no subset)."""
    cla = eds.assignment((), {}, {})
    assert reply.resources[0].Unpack(cla)
    return {
        e["metadata"]["nz.backend"]["name"]: e["metadata"].get("envoy.lb", {}).get("model")
        for e in _endpoints(cla)
    }


@pytest.mark.asyncio
async def test_the_stream_sends_on_request_and_on_change_never_on_ack_nack_or_other() -> None:
    served = [{"name": "llama3:latest", "model": "llama3:latest"}]  # what the backend lists
    runner, url = await serve_models("/api/tags", served)
    spare_runner, spare_url = await serve_models("/api/tags", [{"name": "qwen:0.5b"}])
    redis = redis_client("redis://127.0.0.1:1/0", 0.1)
    discovery = Discovery(
        (Backend("gpu", url, 0), Backend("spare", spare_url, 1)), redis, interval_s=60, ttl_s=60
    )
    server = grpc.aio.server()
    eds.register(discovery)(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await discovery.refresh()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    envoy = _Envoy(channel)
    try:
        envoy.ask("ollama")
        first = await envoy.reply()
        assert first.type_url == eds.TYPE_URL
        assert _models_of(first) == {"gpu": ["llama3:latest"], "spare": ["qwen:0.5b"]}

        envoy.ask("ollama", version=first.version_info, nonce=first.nonce)  # ACK
        await envoy.silence()

        served.append({"name": "phi3:mini", "model": "phi3:mini"})
        await discovery.refresh()
        second = await envoy.reply()
        assert second.version_info != first.version_info
        assert _models_of(second) == {
            "gpu": ["llama3:latest", "phi3:mini"],
            "spare": ["qwen:0.5b"],
        }

        # Envoy refuses it (NACK), still on the first version: nothing new to send
        envoy.ask("ollama", version=first.version_info, nonce=second.nonce, error="bad")
        await envoy.silence()

        envoy.ask("other-cluster")  # unsubscribed from ollama: its changes are not sent
        await envoy.silence()
        envoy.ask("ollama", version=second.version_info, nonce=second.nonce)  # back, up to date
        await envoy.silence()

        await discovery.refresh()  # nothing changed: nothing is sent
        await envoy.silence()

        await spare_runner.cleanup()  # its list lives on until its TTL: nothing changes
        await discovery.refresh()
        await envoy.silence()

        served.clear()  # the next change still arrives on the same stream
        await discovery.refresh()
        third = await envoy.reply()
        assert _models_of(third) == {"gpu": None, "spare": ["qwen:0.5b"]}
    finally:
        await envoy.close()
        await channel.close()
        await server.stop(None)
        await discovery.close()
        await redis.aclose()
        await runner.cleanup()
        await spare_runner.cleanup()
