"""Every Redis script is a ``.lua`` file whose header names its KEYS, ARGV and what it
returns; no Python module carries Lua inline (issue 12: one place to read a script)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("authz", "ratelimit", "accounting", "gateway", "devstack", "neuronetz_gateway")


def _files(pattern: str) -> list[Path]:
    return [p for top in PACKAGES for p in sorted((ROOT / top).rglob(pattern))]


def test_no_python_module_carries_lua() -> None:
    inline = [str(p.relative_to(ROOT)) for p in _files("*.py") if "redis.call(" in p.read_text()]
    assert inline == []


def test_every_script_has_a_header_naming_keys_argv_and_its_answer() -> None:
    scripts = {str(p.relative_to(ROOT)) for p in _files("*.lua")}
    assert scripts == {
        "accounting/lua/take.lua",
        "authz/lua/key_failure.lua",
        "authz/lua/key_revoke.lua",
        "authz/lua/key_store.lua",
        "gateway/lua/admit.lua",
        "gateway/lua/renew.lua",
        "gateway/lua/settle.lua",
        "ratelimit/window.lua",
    }
    for name in sorted(scripts):
        lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
        header = []
        for line in lines:
            if not line.startswith("--"):
                break
            header.append(line)
        text = "\n".join(header)
        for word in ("KEYS[", "ARGV[", "Returns"):
            assert word in text, f"{name}: its header names no {word}"
