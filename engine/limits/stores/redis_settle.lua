-- policyctl: one decision's reserve-then-settle adjustments, atomically.
-- The same arithmetic as `settled` in engine/limits/stores/base.py: a bucket is the time (ms)
-- at which it is full again (absent: full); adjusting it by delta tokens moves that time by
-- delta / rate, from now if it is already full; a refund stops at full (the bucket is deleted).
--
-- KEYS: the bucket keys. ARGV: now_ms, then for every key in KEYS order: rate, delta.
-- Returns: the delta applied to each bucket, as strings (Lua floats would be truncated).

local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i])
  local delta = tonumber(ARGV[2 * i + 1])
  local full_at = tonumber(redis.call("GET", KEYS[i]))
  local start = now
  if full_at ~= nil and full_at >= now then start = full_at end
  local new = start + delta / rate
  local applied = delta
  if new <= now then
    applied = (now - start) * rate
    redis.call("DEL", KEYS[i])
  else
    redis.call("SET", KEYS[i], string.format("%.17g", new), "PX", math.max(1, math.ceil(new - now) + 1000))
  end
  out[i] = string.format("%.17g", applied)
end
return out
