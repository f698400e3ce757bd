"""The ``neuronetz-gateway`` command: the one package that may import every other.

The services (``authz``, ``ratelimit``, ``accounting``) and the local stack (``devstack``)
import the shared package ``gateway``, which imports none of them; the command line that
starts any of them lives here, above all of them (tests/unit/test_import_graph.py).
"""
