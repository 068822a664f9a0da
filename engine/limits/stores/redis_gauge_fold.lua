-- policyctl on a Redis Cluster: a slot's check-and-consume (redis_gcra.lua, run unchanged as
-- `gcra` below) with the in-flight gauges of the same slot taken in the same call, all or
-- nothing: a full gauge denies before any bucket is read, and the gauges are taken only when
-- the buckets admit. A per-user `concurrent` limit thus costs no call of its own.
-- The gauges are redis_inflight.lua's: a sorted set of leases scored by their expiry (ms);
-- an expired lease is trimmed here, so a holder that died frees its slot at its expiry.
--
-- KEYS: redis_gcra.lua's, then every gauge key, then the lease's record of this slot.
-- ARGV: redis_gcra.lua's, then the lease, per gauge: limit, expires_at (ms), and last the
--       count of gauges. They are taken off KEYS and ARGV before `gcra` runs.
-- Returns: a full gauge: { "-2", its 1-based index, its soonest expiry ("" when none), then
--          the slots each gauge held, up to the full one }; else what redis_gcra.lua returns
--          followed by the slots each gauge held before, and the count of gauges.

local g = tonumber(ARGV[#ARGV])
local base = #ARGV - 1 - 2 * g
local lease = ARGV[base]
local record = KEYS[#KEYS]
local gauges, limits, expiries = {}, {}, {}
for i = 1, g do
  gauges[i] = KEYS[#KEYS - g - 1 + i]
  limits[i] = tonumber(ARGV[base + 2 * i - 1])
  expiries[i] = ARGV[base + 2 * i]
end
for i = #ARGV, base, -1 do ARGV[i] = nil end
for i = #KEYS, #KEYS - g, -1 do KEYS[i] = nil end
local now_text = ARGV[1]
local now = tonumber(now_text)
local consume = ARGV[2] == "1"

local held = {}
for i = 1, g do
  redis.call("ZREMRANGEBYSCORE", gauges[i], "-inf", now_text)  -- expired: score <= now
  local count = redis.call("ZCARD", gauges[i])
  held[i] = tostring(count)
  if count >= limits[i] or redis.call("ZSCORE", gauges[i], lease) then
    local first = redis.call("ZRANGE", gauges[i], 0, 0, "WITHSCORES")
    local result = { "-2", tostring(i), first[2] or "" }
    for j = 1, i do result[#result + 1] = held[j] end
    return result
  end
end

local function gcra()
--[[redis_gcra.lua]]
end

local result = gcra()
if consume and tonumber(result[1]) >= 0 then
  local longest = now
  for i = 1, g do
    local expires = tonumber(expiries[i])
    if expires > longest then longest = expires end
    redis.call("ZADD", gauges[i], expiries[i], lease)
    local ttl = math.ceil(expires - now) + 1000  -- the set outlives its longest lease
    if redis.call("PTTL", gauges[i]) < ttl then redis.call("PEXPIRE", gauges[i], ttl) end
    redis.call("SADD", record, gauges[i])
  end
  redis.call("PEXPIRE", record, math.ceil(longest - now) + 1000)
end
for i = 1, g do result[#result + 1] = held[i] end
result[#result + 1] = tostring(g)
return result
