"""What counts as "the store is unavailable": the exceptions of a Redis or PostgreSQL call that
mean the store did not answer, and the one exception a service raises for it.

Every ``except`` around a store call names one of these tuples; a caller that must decide
(authz: a key, a budget) raises :class:`StoreUnavailable` and fails closed with a 503, a
background loop logs and tries again later.
"""

from __future__ import annotations

import asyncpg
from redis.exceptions import RedisClusterException, RedisError

# A Redis call failed: refused or reset (OSError, redis' ConnectionError), timed out (the
# client's socket timeout, a pool without a free connection), or an error reply; on a Redis
# Cluster also no reachable node or no master for a slot (not RedisErrors in redis-py).
REDIS_ERRORS: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)

# A PostgreSQL call failed: refused or reset, timed out (command_timeout), the connection or
# pool closed under it (InterfaceError), or the server refused the statement (PostgresError).
POSTGRES_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

# PostgreSQL not serving, as opposed to refusing one statement (a constraint, a bad value):
# what the admin API answers UNAVAILABLE rather than a statement's own error.
POSTGRES_DOWN: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # shutting down, starting up, statement timeout
    asyncpg.TooManyConnectionsError,
)

# Either store failed.
STORE_ERRORS: tuple[type[Exception], ...] = tuple(dict.fromkeys(REDIS_ERRORS + POSTGRES_ERRORS))


class StoreUnavailable(Exception):
    """Redis or PostgreSQL could not answer what a decision needs: the caller answers 503."""
