-- One rate-limit decision, atomically: GCRA in its leaky-bucket form.
--
-- Every window is one Redis hash {l = level, t = ms of the last update}: `level` is the number
-- of units (requests or tokens) still inside the sliding window; it drains continuously at
-- limit/period units per ms. A hit of n units fits when level + n <= limit. Memory per limited
-- key is constant (two fields) and the key expires once the level has drained to zero.
--
-- KEYS[i]   the window of descriptor i (all KEYS of one call share a Redis Cluster hash tag)
-- ARGV[1]   now in ms, or "" to use the Redis server's clock (TIME)
-- ARGV[1 + 5(i-1) + 1..5] = limit, period_ms, hits, mode, enforce for KEYS[i]
--   mode "c" check only: is there room for one more unit? records nothing
--   mode "a" admission: records `hits` only when the whole decision is admitted
--   mode "d" debit: records `hits` unconditionally (tokens already spent, after the stream)
--   enforce "1": over limit rejects the decision; "0" (shadow mode): reported only
-- Returns {rejected, now, over_1, before_1, after_1, over_2, ...}; levels as strings.
if redis.replicate_commands then
  redis.replicate_commands()
end

local now = tonumber(ARGV[1])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local EPS = 1e-9

local state = {}
local pending = {}
local over = {}
local before = {}
local rejected = false

for i = 1, #KEYS do
  local b = 1 + (i - 1) * 5
  local key = KEYS[i]
  local limit = tonumber(ARGV[b + 1])
  local period = tonumber(ARGV[b + 2])
  local hits = tonumber(ARGV[b + 3])
  local mode = ARGV[b + 4]
  local enforce = ARGV[b + 5] == '1'
  local s = state[key]
  if not s then
    local stored = redis.call('HMGET', key, 'l', 't')
    local level = tonumber(stored[1]) or 0
    local t = tonumber(stored[2]) or now
    if now > t and limit > 0 then
      level = math.max(0, level - (now - t) * limit / period)
    end
    s = {level = level, t = math.max(t, now), limit = limit, period = period, dirty = false}
    state[key] = s
  end
  local level = s.level + (pending[key] or 0)
  before[i] = level
  local need = hits
  if mode == 'c' then
    need = 1
  end
  if level + need > limit + EPS then
    over[i] = 1
    if enforce and mode ~= 'd' then
      rejected = true
    end
  else
    over[i] = 0
  end
  if mode ~= 'c' then
    pending[key] = (pending[key] or 0) + hits
  end
end

-- Commit: debits always, admissions only when nothing enforced said no.
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 5
  local mode = ARGV[b + 4]
  local hits = tonumber(ARGV[b + 3])
  local s = state[KEYS[i]]
  if (mode == 'd' or (mode == 'a' and not rejected)) and hits > 0 then
    s.level = s.level + hits
    s.dirty = true
  end
end

for key, s in pairs(state) do
  if s.dirty then
    redis.call('HSET', key, 'l', tostring(s.level), 't', tostring(s.t))
    local drain_ms = s.period
    if s.limit > 0 then
      drain_ms = math.ceil(s.level * s.period / s.limit)
    end
    redis.call('PEXPIRE', key, drain_ms + 1000)
  end
end

local out = {rejected and 1 or 0, tostring(now)}
for i = 1, #KEYS do
  out[#out + 1] = over[i]
  out[#out + 1] = string.format('%.6f', before[i])
  out[#out + 1] = string.format('%.6f', state[KEYS[i]].level)
end
return out
