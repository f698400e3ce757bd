"""The backends configuration as an operator meets it: what NZ_OLLAMA_URLS and NZ_BACKENDS_FILE
give, and every refusal naming the backend and the field but never a credential's value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.backends import (
    CREDENTIAL_HEADERS,
    Backend,
    BackendsError,
    configured,
    from_urls,
    load_file,
    write_file,
)

SECRET = "Bearer sk-very-secret-0123456789"


def _view(backends: tuple[Backend, ...]) -> list[tuple[str, str, int, dict[str, str]]]:
    """What a backend is, headers' values included (only tests look at them)."""
    return [(b.name, b.url, b.priority, b.upstream_headers()) for b in backends]


def _file(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "backends.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def _refused(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(BackendsError) as caught:
        load_file(path, environ if environ is not None else {})
    message = str(caught.value)
    assert SECRET not in message
    assert "sk-very-secret" not in message
    return message


# -- NZ_OLLAMA_URLS ----------------------------------------------------------------------


def test_one_url_is_one_backend_named_ollama() -> None:
    (backend,) = from_urls(["http://gpu-box:11434"])
    assert (backend.name, backend.url, backend.priority) == ("ollama", "http://gpu-box:11434", 0)
    assert backend.headers == {}
    assert (backend.host, backend.port, backend.tls) == ("gpu-box", 11434, False)


def test_several_urls_are_numbered_in_priority_order() -> None:
    backends = from_urls(["http://a:11434", "http://b:11434", "https://c"])
    assert [(b.name, b.url, b.priority) for b in backends] == [
        ("ollama-1", "http://a:11434", 0),
        ("ollama-2", "http://b:11434", 1),
        ("ollama-3", "https://c", 2),
    ]


def test_https_means_tls_on_port_443_and_http_means_port_80() -> None:
    (cloud,) = from_urls(["https://ollama.com"])
    assert (cloud.tls, cloud.port, cloud.host) == (True, 443, "ollama.com")
    (plain,) = from_urls(["http://box"])
    assert (plain.tls, plain.port) == (False, 80)


def test_a_trailing_slash_alone_is_dropped() -> None:
    """``http://box:11434/`` is how people paste a URL: the backend's URL has no slash."""
    (backend,) = from_urls(["http://box:11434/"])
    assert backend.url == "http://box:11434"


@pytest.mark.parametrize(
    "url",
    [
        "http://box:11434/api",
        "http://box:11434/ollama/",
        "http://box:11434?x=1",
        "http://box:11434#top",
        "http://user:pw@box:11434",
        "ftp://box",
        "box:11434",
        "http://",
        "http://box:99999",
    ],
)
def test_a_url_that_is_not_scheme_host_port_is_refused(url: str) -> None:
    with pytest.raises(BackendsError, match=r"backend 'ollama': .*url") as caught:
        from_urls([url])
    assert "pw" not in str(caught.value)


def test_the_refused_url_names_its_numbered_backend() -> None:
    with pytest.raises(BackendsError, match=r"backend 'ollama-2': url must be scheme://host"):
        from_urls(["http://a:11434", "http://b:11434/v1"])


# -- NZ_BACKENDS_FILE --------------------------------------------------------------------


def test_a_full_file_is_read_as_written(tmp_path: Path) -> None:
    secret_file = tmp_path / "cloud-auth"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    path = _file(
        tmp_path,
        {
            "backends": [
                {"name": "gpu", "url": "http://gpu-box:11434", "priority": 0},
                {
                    "name": "cloud",
                    "url": "https://ollama.com",
                    "priority": 1,
                    "headers": {"Authorization": {"file": str(secret_file)}},
                },
                {
                    "name": "spare-2",
                    "url": "http://10.0.0.7:8080",
                    "priority": 127,
                    "headers": {"x-api-key": {"env": "SPARE_KEY"}},
                },
                {"name": "default-prio", "url": "http://d"},
            ]
        },
    )
    backends = load_file(path, {"SPARE_KEY": "k-123"})
    assert _view(backends) == [
        ("gpu", "http://gpu-box:11434", 0, {}),
        ("cloud", "https://ollama.com", 1, {"authorization": SECRET}),
        ("spare-2", "http://10.0.0.7:8080", 127, {"x-api-key": "k-123"}),
        ("default-prio", "http://d", 0, {}),
    ]


def test_a_json_file_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "backends.json"
    path.write_text('{"backends": [{"name": "a", "url": "http://a:1"}]}', encoding="utf-8")
    assert _view(load_file(path, {})) == [("a", "http://a:1", 0, {})]


def test_the_process_environment_is_read_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NZ_TEST_CLOUD_AUTH", SECRET)
    path = _file(
        tmp_path,
        {
            "backends": [
                {
                    "name": "cloud",
                    "url": "https://ollama.com",
                    "headers": {"authorization": {"env": "NZ_TEST_CLOUD_AUTH"}},
                }
            ]
        },
    )
    assert load_file(path)[0].upstream_headers() == {"authorization": SECRET}


def _one(tmp_path: Path, **entry: Any) -> Path:
    return _file(tmp_path, {"backends": [{"name": "cloud", "url": "https://ollama.com", **entry}]})


def test_an_unknown_field_is_refused_by_name(tmp_path: Path) -> None:
    path = _one(tmp_path, token=SECRET, weight=3)
    assert _refused(path) == "backends[0]: unknown field(s) token, weight"


@pytest.mark.parametrize("name", ["GPU", "-gpu", "gpu-", "gpu_box", "", "a" * 41, 7, None])
def test_a_bad_name_is_refused(tmp_path: Path, name: Any) -> None:
    path = _file(
        tmp_path,
        {"backends": [{"name": "a", "url": "http://a"}, {"name": name, "url": "http://b"}]},
    )
    assert _refused(path) == ("backends[1]: name must be lowercase letters, digits and '-' (1-40)")


def test_a_forty_character_name_is_fine(tmp_path: Path) -> None:
    path = _file(tmp_path, {"backends": [{"name": "a" * 40, "url": "http://b"}]})
    assert load_file(path, {})[0].name == "a" * 40


def test_a_name_used_twice_is_refused(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        {"backends": [{"name": "gpu", "url": "http://a"}, {"name": "gpu", "url": "http://b"}]},
    )
    assert _refused(path) == "backend 'gpu' is named twice"


@pytest.mark.parametrize("priority", [-1, 128, True, False, 1.5, "1", None])
def test_a_priority_outside_0_to_127_or_not_an_integer_is_refused(
    tmp_path: Path, priority: Any
) -> None:
    path = _one(tmp_path, priority=priority)
    assert _refused(path) == "backend 'cloud': priority must be an integer from 0 to 127"


def test_a_missing_url_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, {"backends": [{"name": "cloud"}]})
    assert _refused(path) == "backend 'cloud': url is required"


def test_a_url_with_a_path_is_refused_by_backend_name(tmp_path: Path) -> None:
    path = _one(tmp_path, url="https://ollama.com/api")
    assert _refused(path) == "backend 'cloud': url must be scheme://host[:port] only"


def test_a_header_that_is_not_a_credential_is_refused(tmp_path: Path) -> None:
    path = _one(tmp_path, headers={"x-forwarded-for": {"env": "X"}})
    message = _refused(path, {"X": SECRET})
    assert message == (
        "backend 'cloud': header 'x-forwarded-for' cannot be set "
        f"(allowed: {', '.join(CREDENTIAL_HEADERS)})"
    )


def test_a_header_with_an_inline_value_not_a_credential_names_no_value(tmp_path: Path) -> None:
    path = _one(tmp_path, headers={"cookie": SECRET})
    assert "header 'cookie' cannot be set" in _refused(path)


@pytest.mark.parametrize(
    "source",
    [
        SECRET,
        {"value": SECRET},
        {"file": "/x", "value": SECRET},
        {"env": "A", "file": "/x"},
        [SECRET],
        None,
    ],
)
def test_a_value_written_in_the_file_is_refused_without_showing_it(
    tmp_path: Path, source: Any
) -> None:
    path = _one(tmp_path, headers={"authorization": source})
    assert _refused(path, {"A": SECRET}) == (
        "backend 'cloud' header 'authorization': the value comes from {file: PATH} or {env: NAME}"
    )


def test_headers_that_are_not_a_mapping_are_refused(tmp_path: Path) -> None:
    path = _one(tmp_path, headers=[f"authorization: {SECRET}"])
    assert _refused(path) == (
        "backend 'cloud': headers must be a mapping of header name to a source"
    )


def test_a_missing_secret_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    path = _one(tmp_path, headers={"authorization": {"file": str(missing)}})
    assert _refused(path) == (
        f"backend 'cloud' header 'authorization': file {missing}: No such file or directory"
    )


def test_a_missing_environment_variable_is_refused(tmp_path: Path) -> None:
    path = _one(tmp_path, headers={"x-api-key": {"env": "CLOUD_KEY"}})
    assert _refused(path, {"OTHER": SECRET}) == (
        "backend 'cloud' header 'x-api-key': environment variable CLOUD_KEY is not set"
    )


@pytest.mark.parametrize(
    "content",
    ["", "\n", f"{SECRET}\nsecond line\n", f"{SECRET}\r\nsecond", f"{SECRET}\0x", f"a\n{SECRET}"],
)
def test_an_empty_or_multi_line_value_in_a_file_is_refused(tmp_path: Path, content: str) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(content, encoding="utf-8", newline="")
    path = _one(tmp_path, headers={"authorization": {"file": str(secret_file)}})
    assert _refused(path) == (
        "backend 'cloud' header 'authorization': the value is empty or spans lines"
    )


@pytest.mark.parametrize("value", ["", f"{SECRET}\n", f"x\n{SECRET}"])
def test_an_empty_or_multi_line_value_in_the_environment_is_refused(
    tmp_path: Path, value: str
) -> None:
    path = _one(tmp_path, headers={"authorization": {"env": "CLOUD_AUTH"}})
    assert _refused(path, {"CLOUD_AUTH": value}) == (
        "backend 'cloud' header 'authorization': the value is empty or spans lines"
    )


def test_a_missing_backends_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "backends.yaml"
    assert _refused(missing) == f"backends file {missing}: No such file or directory"


def test_a_file_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "backends.yaml"
    path.write_text("backends:\n- name: gpu\n\turl: http://a\n", encoding="utf-8")
    assert _refused(path) == (
        f"backends file {path}: not YAML "
        "(found character '\\t' that cannot start any token, line 3 column 1)"
    )


def test_a_broken_file_with_an_inline_secret_does_not_echo_it(tmp_path: Path) -> None:
    """An operator who wrote the credential in the file by mistake and broke its syntax must
    not find the credential in the service's log."""
    path = tmp_path / "backends.yaml"
    path.write_text(
        "backends:\n- name: cloud\n  url: https://ollama.com\n"
        f'  headers: {{authorization: "{SECRET}}}\n',
        encoding="utf-8",
    )
    assert _refused(path) == (
        f"backends file {path}: not YAML (found unexpected end of stream, line 5 column 1)"
    )


@pytest.mark.parametrize(
    "text",
    ["", "backends: []\n", "backends:\n", "backends: {name: a}\n", "- name: a\n", "other: 1\n"],
)
def test_a_file_without_a_backends_list_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "backends.yaml"
    path.write_text(text, encoding="utf-8")
    assert _refused(path) == f"backends file {path}: needs a non-empty list 'backends'"


def test_an_entry_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, {"backends": [f"https://ollama.com {SECRET}"]})
    assert _refused(path) == "backends[0]: expected a mapping with name and url"


# -- what a backend shows ----------------------------------------------------------------


def test_a_backend_never_prints_a_header_value(tmp_path: Path) -> None:
    path = _one(tmp_path, headers={"authorization": {"env": "CLOUD_AUTH"}})
    (backend,) = load_file(path, {"CLOUD_AUTH": SECRET})
    for shown in (repr(backend), str(backend), f"{backend}", repr(backend.headers)):
        assert SECRET not in shown
        assert "sk-very-secret" not in shown
        assert "cloud" in shown or "authorization" in shown
    assert "**********" in repr(backend)


# -- the settings' choice ----------------------------------------------------------------


def test_a_backends_file_wins_over_the_urls(tmp_path: Path) -> None:
    path = _file(tmp_path, {"backends": [{"name": "gpu", "url": "http://gpu:11434"}]})
    backends = configured(str(path), ["http://a:11434", "http://b:11434"])
    assert _view(backends) == [("gpu", "http://gpu:11434", 0, {})]


def test_without_a_file_the_urls_are_the_backends() -> None:
    backends = configured("", ["http://a:11434", "http://b:11434"])
    assert [(b.name, b.url) for b in backends] == [
        ("ollama-1", "http://a:11434"),
        ("ollama-2", "http://b:11434"),
    ]


def test_no_urls_and_no_file_is_an_error() -> None:
    with pytest.raises(BackendsError, match="no backend: set NZ_OLLAMA_URLS or NZ_BACKENDS_FILE"):
        configured("", [])


def test_a_named_file_that_is_missing_is_an_error_even_with_urls(tmp_path: Path) -> None:
    with pytest.raises(BackendsError, match="No such file"):
        configured(str(tmp_path / "missing.yaml"), ["http://a:11434"])


# -- write_file ----------------------------------------------------------------------------


def test_a_written_file_reads_back_as_the_same_backends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("key-1\n", encoding="utf-8")
    monkeypatch.setenv("NZ_TEST_CLOUD_AUTH", SECRET)
    entries: list[dict[str, Any]] = [
        {"name": "gpu", "url": "http://gpu:11434", "priority": 0},
        {
            "name": "cloud",
            "url": "https://ollama.com",
            "priority": 2,
            "headers": {
                "authorization": {"env": "NZ_TEST_CLOUD_AUTH"},
                "x-api-key": {"file": str(secret_file)},
            },
        },
    ]
    path = write_file(entries, tmp_path / "written.yaml")
    assert path == tmp_path / "written.yaml"
    assert _view(load_file(path)) == [
        ("gpu", "http://gpu:11434", 0, {}),
        ("cloud", "https://ollama.com", 2, {"authorization": SECRET, "x-api-key": "key-1"}),
    ]
    assert SECRET not in path.read_text(encoding="utf-8")
    assert _view(configured(str(path), [])) == _view(load_file(path))
