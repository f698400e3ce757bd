-- Revocation of a key in the shared cache: drop every cached entry of its prefix and every
-- remembered secret, and leave the tombstone that stops a check in flight from caching the key
-- again (run by authz/keys.py: KeyStore.evict).
--
-- KEYS[1]  the prefix's cache hash `nz:key:{<prefix>}`
-- KEYS[2]  the prefix's verified-secret hash `nz:key:{<prefix>}:verified`
-- ARGV[1]  the tombstone's ttl (s)
-- Returns 1.
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'revoked', '1')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
