-- Take a dead accounting's in-flight snapshot: read it and delete it in one step, so that of
-- two takers (the instance restarting, another replica adopting it) exactly one gets it.
--
-- KEYS[1]  the instance's snapshot hash `nz:accounting:inflight:<instance>` (accounting/inflight.py)
-- ARGV[]   none
-- Returns  the hash's fields and values, flat (HGETALL's reply); empty when nobody left one
local entries = redis.call('HGETALL', KEYS[1])
if #entries > 0 then redis.call('DEL', KEYS[1]) end
return entries
