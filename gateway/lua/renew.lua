-- Lease renewal of one request in flight: push the expiry of its slots and of its budget
-- reservation (run by gateway/leases.py: renew_all, every few seconds while its stream lives).
--
-- KEYS[1]  the key's slot set      KEYS[2]  the tenant's slot set  (gateway/slots.py)
-- KEYS[3]  the request's reservation record `nz:{T}:rsv:<request_id>` (written by admit.lua)
-- ARGV[1]  request id (the slot sets' member)
-- ARGV[2]  slot expiry (epoch seconds)          ARGV[3]  slot sets' ttl (s)
-- ARGV[4]  reservation expiry (epoch seconds)   ARGV[5]  reserved sets' (and `:sum`) ttl (s)
-- ARGV[6]  the record's ttl (s)
-- Returns 1 when the request has a reservation record, 0 when not (slots are renewed either
-- way). A member is re-scored only where it still is (ZADD XX): nothing released, settled or
-- swept comes back; a key's ttl is only ever lengthened.
local rid = ARGV[1]
local function keep(key, ttl)
  local left = redis.call('TTL', key)
  if left >= 0 and left < ttl then redis.call('EXPIRE', key, ttl) end
end
for i = 1, 2 do
  if redis.call('ZSCORE', KEYS[i], rid) then
    redis.call('ZADD', KEYS[i], 'XX', ARGV[2], rid)
    keep(KEYS[i], tonumber(ARGV[3]))
  end
end
local rec = redis.call('GET', KEYS[3])
if not rec then return 0 end
local r = cjson.decode(rec)
local ttl = tonumber(ARGV[5])
for _, pair in ipairs(r.p) do
  if redis.call('ZSCORE', pair[2], r.m) then
    redis.call('ZADD', pair[2], 'XX', ARGV[4], r.m)
    keep(pair[2], ttl)
    keep(pair[2] .. ':sum', ttl)
  end
end
keep(KEYS[3], tonumber(ARGV[6]))
return 1
