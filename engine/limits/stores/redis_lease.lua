-- policyctl: leases on shared buckets (engine/limits/stores/leases.py), atomically.
-- One call renews, takes or returns the leases of one instance on buckets of one slot.
--
-- KEYS: the bucket keys (GCRA form as in redis_gcra.lua: the time, ms, at which the bucket
--       is full again; absent means full).
-- ARGV: now_ms, then for every key in KEYS order: capacity, rate (tokens per ms), give_back
--       (unspent tokens of this instance's lease handed back first), want (the batch asked
--       for), need (the least worth taking: the decision's cost; 0 with want 0: return only).
-- Per key: the give-back moves the time back by give_back / rate (a bucket never becomes
-- more than full: past full it is deleted); then, when the bucket has at least `need`
-- tokens, min(want, available) is taken (at least need: the slack of redis_gcra.lua may
-- admit a hair under it), else nothing.
-- Returns, per key: granted, available (after the give-back, before the grant), full_at
-- (after the grant), numbers as strings (Lua floats would be truncated).

local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 5
  local key = KEYS[i]
  local capacity = tonumber(ARGV[a + 1])
  local rate = tonumber(ARGV[a + 2])
  local give_back = tonumber(ARGV[a + 3])
  local want = tonumber(ARGV[a + 4])
  local need = tonumber(ARGV[a + 5])
  local full_at = tonumber(redis.call("GET", key))
  if full_at == nil or full_at < now then full_at = now end
  if give_back > 0 then
    full_at = math.max(now, full_at - give_back / rate)
  end
  local have = capacity - (full_at - now) * rate
  local granted = 0
  if want > 0 and have + 1e-9 + rate * 0.01 >= need then
    granted = math.max(need, math.min(want, have))
    full_at = full_at + granted / rate
  end
  if full_at > now then
    redis.call("SET", key, string.format("%.17g", full_at), "PX", math.max(1, math.ceil(full_at - now) + 1000))
  else
    redis.call("DEL", key)
  end
  out[#out + 1] = string.format("%.17g", granted)
  out[#out + 1] = string.format("%.17g", have)
  out[#out + 1] = string.format("%.17g", full_at)
end
return out
