-- Cache a verified key (and remember that its secret verified) unless the key's prefix carries
-- the revocation tombstone (run by authz/keys.py: KeyStore._cold, after a cold check).
--
-- KEYS[1]  the prefix's cache hash `nz:key:{<prefix>}` (field = cache id, or `revoked`)
-- KEYS[2]  the prefix's verified-secret hash `nz:key:{<prefix>}:verified`
-- ARGV[1]  the presented key's cache id (gateway/apikeys.py: cache_id), both hashes' field
-- ARGV[2]  the principal as JSON          ARGV[3]  the cache hash's ttl (s)
-- ARGV[4]  the fingerprint of the argon2 hash the secret verified against
-- ARGV[5]  the verified-secret hash's ttl (s)
-- Returns 1 when cached, 0 when the tombstone is there (a revocation won the race: nothing
-- written).
if redis.call('HEXISTS', KEYS[1], 'revoked') == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
