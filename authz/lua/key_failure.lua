-- One failed key check, counted in a fixed window (run by authz/keys.py:
-- KeyStore._count_failure, for the (prefix, address) counter and the address's).
--
-- KEYS[1]  the counter: `nz:keyfail:{<prefix>}:<address>` or `nz:authfail:{<address>}`
-- ARGV[1]  the window (s): the counter's ttl, set by the window's first failure
-- Returns the failures counted in the window so far, this one included.
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
