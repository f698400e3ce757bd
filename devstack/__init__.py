"""The local stack: real Envoy, PostgreSQL and Redis from Python packages, our three services
and a mock Ollama, on free loopback ports. Used by ``neuronetz-gateway dev`` and the tests."""
