"""``python -m devstack.mock_ollama``: serve the mock (see ``server.main`` for the arguments)."""

from devstack.mock_ollama.server import main

main()
