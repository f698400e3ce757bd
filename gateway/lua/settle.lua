-- Settlement of one request's reservation, exactly once (run by gateway/budgets.py: settle;
-- the record is written by admit.lua).
--
-- KEYS[1]  the request's reservation record `nz:{T}:rsv:<request_id>`: JSON
--          {m = `<request_id>|<tokens>`, p = {{used, reserved}, ...}}
-- ARGV[1]  the request's real token count (>= 0)
-- Returns 1 when the record was consumed: on every budget the member leaves the reserved set
-- (its tokens leave `<reserved>:sum`, unless it expired and was swept already) and the real
-- count is added to *used* (a missing *used* counter stays missing: the next admission rebuilds
-- it from the ledger); 0 when there is no record (settled already, or no budget applied).
local rec = redis.call('GET', KEYS[1])
if not rec then return 0 end
redis.call('DEL', KEYS[1])
local r = cjson.decode(rec)
local actual = tonumber(ARGV[1])
local amount = tonumber(string.match(r.m, '|(%d+)$')) or 0
for _, pair in ipairs(r.p) do
  if redis.call('ZREM', pair[2], r.m) == 1 then redis.call('DECRBY', pair[2] .. ':sum', amount) end
  if actual > 0 and redis.call('EXISTS', pair[1]) == 1 then
    redis.call('INCRBY', pair[1], actual)
  end
end
return 1
