"""Settings are checked at start (gateway/settings.py): every problem is one line naming the
variable (never a secret's value), a service exits 2 on them without a traceback, a misspelt
``NZ_*`` variable is named (with a guess), and ``neuronetz-gateway config check`` shows the
effective settings with their secrets redacted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import (
    SettingsError,
    inspect_environment,
    load_settings,
    redact_url,
    redacted,
    unknown_variables,
)
from neuronetz_gateway.cli import main

BAD = {
    "NZ_METRICS_PORT": "ninety",
    "NZ_DATABASE_URL": "postgresql://gw:s3cret@db:port/gateway",
    "NZ_REDIS_URL": "http://redis:6379",
    "NZ_AUTHZ_LISTEN": "9001",
    "NZ_LOG_LEVEL": "loud",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No NZ_* (nor the URL fallbacks) from the calling shell."""
    for var in list(os.environ):
        if var.startswith("NZ_") or var in ("DATABASE_URL", "REDIS_URL", "OLLAMA_URL"):
            monkeypatch.delenv(var)
    return monkeypatch


def test_every_problem_is_one_line_naming_its_variable() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(BAD)
    problems = err.value.problems
    assert [line.split(":", 1)[0] for line in problems] == [
        "NZ_DATABASE_URL",
        "NZ_REDIS_URL",
        "NZ_AUTHZ_LISTEN",
        "NZ_METRICS_PORT",
        "NZ_LOG_LEVEL",
    ]
    assert all("\n" not in line for line in problems)
    assert "port is not a number" in problems[0]
    assert "s3cret" not in str(err.value)  # the password never shows


def test_a_fallback_variable_is_named_as_set() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"DATABASE_URL": "mysql://db/gateway"})
    assert err.value.problems[0].startswith("DATABASE_URL: not a postgresql/postgres URL")


def test_an_unreadable_admin_token_file_is_a_problem() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"NZ_ADMIN_TOKEN_FILE": "/nonexistent/token"})
    assert err.value.problems == [
        "NZ_ADMIN_TOKEN_FILE: cannot read /nonexistent/token: No such file or directory"
    ]


def test_good_settings_load() -> None:
    cfg = load_settings({"NZ_METRICS_PORT": "9100", "NZ_REDIS_URL": "rediss://r:6380/1"})
    assert cfg.metrics_port == 9100
    assert cfg.redis_url == "rediss://r:6380/1"


def test_unknown_variables_are_named_with_a_guess() -> None:
    env = {"NZ_REDIS_ULR": "x", "NZ_FROBNICATE": "1", "NZ_REDIS_URL": "redis://r/0"}
    env |= {"NZ_ADMIN_TOKEN_FILE": "/t", "NZ_TEST_CLOUD_AUTH": "1", "PATH": "/bin"}
    assert unknown_variables(env) == ["NZ_FROBNICATE", "NZ_REDIS_ULR (did you mean NZ_REDIS_URL?)"]


def test_secrets_are_redacted() -> None:
    cfg = load_settings(
        {
            "NZ_ADMIN_TOKEN": "tok-123",
            "NZ_DATABASE_URL": "postgresql://gw:s3cret@db:5432/gateway",
            "NZ_REDIS_URL": "redis://:pw@r:6379/0",
        }
    )
    shown = redacted(cfg)
    assert shown["NZ_ADMIN_TOKEN"] == "[redacted]"
    assert shown["NZ_DATABASE_URL"] == "postgresql://gw:***@db:5432/gateway"
    assert shown["NZ_REDIS_URL"] == "redis://:***@r:6379/0"
    assert redact_url("http://h:11434") == "http://h:11434"


def test_an_invalid_setting_is_reported_and_the_rest_still_inspected() -> None:
    found = inspect_environment({"NZ_METRICS_PORT": "x", "NZ_LOG_LEVEL": "debug"})
    assert found.invalid == {"NZ_METRICS_PORT"}
    assert found.settings.log_level == "debug"
    assert len(found.problems) == 1


def test_config_check_prints_settings_and_problems(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("NZ_ADMIN_TOKEN", "tok-123")
    clean_env.setenv("NZ_DATABASE_URL", "postgresql://gw:s3cret@db:5432/gateway")
    assert main(["config", "check"]) == 0
    out, err = capsys.readouterr()
    assert "NZ_DATABASE_URL=postgresql://gw:***@db:5432/gateway\n" in out
    assert "NZ_ADMIN_TOKEN=[redacted]\n" in out
    assert "tok-123" not in out + err and "s3cret" not in out + err
    assert err == "ok: no problems\n"

    clean_env.setenv("NZ_METRICS_PORT", "x")
    clean_env.setenv("NZ_RATELIMT_CONFIG", "/etc/limits.yaml")
    assert main(["config", "check"]) == 1
    out, err = capsys.readouterr()
    assert "NZ_METRICS_PORT=(invalid: see below)\n" in out
    assert err.splitlines() == [
        "problem: NZ_METRICS_PORT: Input should be a valid integer, unable to parse string as"
        " an integer (got 'x')",
        "problem: NZ_RATELIMT_CONFIG (did you mean NZ_RATELIMIT_CONFIG?): unknown variable,"
        " ignored",
        "2 problem(s)",
    ]


def test_a_service_with_bad_settings_exits_2_without_a_traceback_after_naming_unknowns() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NZ_")}
    result = subprocess.run(
        [sys.executable, "-m", "neuronetz_gateway", "accounting"],
        env={**env, **BAD, "NZ_REDIS_ULR": "redis://r/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    warning, *lines = result.stderr.splitlines()
    assert warning == (
        "neuronetz-gateway accounting: warning: unknown variables ignored:"
        " NZ_REDIS_ULR (did you mean NZ_REDIS_URL?)"
    )
    assert len(lines) == 5
    assert all(line.startswith("neuronetz-gateway accounting: bad setting: NZ_") for line in lines)
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr


def test_a_store_unreachable_at_start_is_one_line_not_a_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NZ_")}
    env |= {"NZ_DATABASE_URL": "postgresql://gw:s3cret@127.0.0.1:1/gateway", "NZ_WORKERS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "neuronetz_gateway", "authz"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        "neuronetz-gateway authz: cannot run: ConnectionRefusedError"
    )
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr


def test_a_backend_url_with_a_path_is_refused_by_the_backends_rule() -> None:
    # Every service reads NZ_OLLAMA_URLS with authz's rule (gateway/backends.py): a path would
    # be dropped by Envoy's cluster, so it is refused where it is set, naming the backend.
    with pytest.raises(SettingsError) as err:
        load_settings({"NZ_OLLAMA_URLS": "http://gpu:11434,http://cpu:11434/api"})
    assert err.value.problems == [
        "NZ_OLLAMA_URLS: backend 'ollama-2': url must be scheme://host[:port] only"
        " (e.g. http://host:11434) (got 'http://gpu:11434,http://cpu:11434/api')"
    ]
    assert load_settings({"NZ_OLLAMA_URLS": "http://gpu:11434/"}).ollama_urls == [
        "http://gpu:11434"
    ]


def test_config_check_reads_the_backends_file_as_authz_will(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    clean_env.setenv("NZ_ADMIN_TOKEN", "tok-123")
    backends = tmp_path / "backends.yaml"
    backends.write_text(
        "backends:\n"
        "- name: cloud\n"
        "  url: https://ollama.example\n"
        "  headers:\n"
        f"    authorization: {{ file: {tmp_path}/missing-secret }}\n"
    )
    clean_env.setenv("NZ_BACKENDS_FILE", str(backends))
    assert main(["config", "check"]) == 1
    _, err = capsys.readouterr()
    assert err.splitlines() == [
        "problem: NZ_BACKENDS_FILE: backend 'cloud' header 'authorization': file"
        f" {tmp_path}/missing-secret: No such file or directory",
        "1 problem(s)",
    ]

    (tmp_path / "missing-secret").write_text("Bearer cloud-secret-value\n")
    assert main(["config", "check"]) == 0
    out, err = capsys.readouterr()
    assert err == "ok: no problems\n"
    assert "cloud-secret-value" not in out + err
