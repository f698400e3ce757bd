-- Admission, atomically under one tenant's hash tag: check every budget, take the concurrency
-- slots, reserve tokens on every budget (run by authz/admission.py; layout in gateway/budgets.py
-- and gateway/slots.py).
--
-- KEYS[2i-1], KEYS[2i]  budget i's *used* counter and *reserved* sorted set (i = 1..nb); the
--                       set's total is beside it, `<reserved>:sum`
-- KEYS[2nb+j]           slot set j (j = 1..ns): the key's, then the tenant's
-- KEYS[#KEYS]           the request's reservation record (`nz:{T}:rsv:<request_id>`)
-- ARGV[1]  now (epoch seconds)          ARGV[2]  nb        ARGV[3]  ns
-- ARGV[4]  tokens wanted                ARGV[5]  request id
-- ARGV[6]  "1": take (reserve + slots), "0": check only
-- ARGV[7]  reservation lease (s)        ARGV[8]  slot expiry (epoch seconds)
-- ARGV[9]  tokens needed (fewer left: refused)
-- ARGV[9+i] budget i's limit;  ARGV[9+nb+j] slot set j's limit;  ARGV[#ARGV] record ttl (s)
-- Returns {status, i, tokens left on budget i before this request, reserved or slot index}:
--   {0, i, left, reserved}  admitted (i: the binding budget, the one with fewest tokens left;
--                           0 when nb = 0)
--   {1, i, left, 0}         budget i has fewer than ARGV[9] tokens left
--   {2, i, left, j}         slot set j is full
--   {3, i1, i2, ...}        the *used* counters of budgets i1, i2... are missing: rebuild them
--                           from the ledger and call again (nothing was changed)
-- Reservation member `<request_id>|<tokens>`, score its expiry; expired members are dropped
-- (and subtracted from `:sum`) before a budget is read. The record is JSON
-- {m = member, p = {{used, reserved}, ...}}, read by settle.lua and renew.lua.
local now = tonumber(ARGV[1])
local nb = tonumber(ARGV[2])
local ns = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local rid = ARGV[5]
local take = ARGV[6] == '1'
local ttl = tonumber(ARGV[7])
local slot_expiry = tonumber(ARGV[8])
local need = tonumber(ARGV[9])
local missing = {}
local used_of = {}
for i = 1, nb do
  local used = redis.call('GET', KEYS[2 * i - 1])
  if used then used_of[i] = tonumber(used) else missing[#missing + 1] = i end
end
if #missing > 0 then return {3, unpack(missing)} end
local minrem = 0
local mini = 0
for i = 1, nb do
  local used = used_of[i]
  local res = KEYS[2 * i]
  local total = res .. ':sum'
  local expired = redis.call('ZRANGEBYSCORE', res, '-inf', now)
  if #expired > 0 then
    local gone = 0
    for _, m in ipairs(expired) do gone = gone + (tonumber(string.match(m, '|(%d+)$')) or 0) end
    redis.call('ZREMRANGEBYSCORE', res, '-inf', now)
    redis.call('DECRBY', total, gone)
  end
  local rem = tonumber(ARGV[9 + i]) - used - (tonumber(redis.call('GET', total)) or 0)
  if mini == 0 or rem < minrem then
    minrem = rem
    mini = i
  end
end
if not take then return {0, mini, minrem, 0} end
if mini > 0 and minrem < need then return {1, mini, minrem, 0} end
for j = 1, ns do
  local zs = KEYS[2 * nb + j]
  redis.call('ZREMRANGEBYSCORE', zs, '-inf', now)
  if redis.call('ZCARD', zs) >= tonumber(ARGV[9 + nb + j]) then return {2, mini, minrem, j} end
end
for j = 1, ns do
  local zs = KEYS[2 * nb + j]
  redis.call('ZADD', zs, slot_expiry, rid)
  redis.call('EXPIRE', zs, math.max(ttl, math.ceil(slot_expiry - now)))
end
if nb == 0 then return {0, 0, 0, 0} end
local amount = math.min(want, minrem)
local member = rid .. '|' .. amount
local counters = {}
for i = 1, nb do
  if redis.call('ZADD', KEYS[2 * i], now + ttl, member) == 1 then  -- a retried call adds nothing
    redis.call('INCRBY', KEYS[2 * i] .. ':sum', amount)
  end
  redis.call('EXPIRE', KEYS[2 * i], ttl)
  redis.call('EXPIRE', KEYS[2 * i] .. ':sum', ttl)
  counters[i] = {KEYS[2 * i - 1], KEYS[2 * i]}
end
-- The record outlives the reservation (ARGV[#ARGV]): a late settlement still finds it.
redis.call('SET', KEYS[#KEYS], cjson.encode({m = member, p = counters}), 'EX', ARGV[#ARGV])
return {0, mini, minrem, amount}
