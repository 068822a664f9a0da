-- policyctl: reserve-then-settle, atomically. Three modes (ARGV[1]):
--
-- adjust: one decision's adjustments. KEYS: the bucket keys. ARGV: "adjust", now_ms, then
--         for every key in KEYS order: rate, delta. Returns the delta applied to each.
-- take:   settle a reservation record (written by `redis_gcra.lua`), once, on any instance.
--         KEYS: the record. ARGV: "take", now_ms, request id, then the outcome's input
--         tokens, output tokens and cost ("" when not reported). The record is taken out
--         (deleted) first: a second call finds nothing. Past its expires_at (the engine's
--         clock) nothing is applied (its maker's sweep counts it expired). Else the rules of
--         `Limiter.settle`: tokens used = (input tokens, default the request's) + output
--         tokens (none without output tokens); a spend bucket settles by the cost; each
--         bucket whose actual differs from its estimate is adjusted by the difference.
--         Returns { "absent" } | { "expired" | "settled", the record's expires_at, then per
--         bucket of the record: key, unit (t/s), estimate, actual ("": not reported, or
--         expired), delta applied ("": not adjusted) } (every bucket, adjusted or not: the
--         settling instance writes the analytics rows from them).
-- count:  this store's outstanding reservations. KEYS: its outstanding set, its mailbox of
--         expired ones. ARGV: "count", now_ms. Sweeps the set (expired: score <= now) and
--         empties the mailbox. Returns { outstanding, expired since the last count }.
--
-- The arithmetic of `settled` in engine/limits/stores/base.py: a bucket is the time (ms) at
-- which it is full again (absent: full); adjusting it by delta tokens moves that time by
-- delta / rate, from now if it is already full; a refund stops at full (the bucket is
-- deleted). Numbers are returned as strings (Lua floats would be truncated).

local mode = ARGV[1]
local now = tonumber(ARGV[2])

local function adjust(key, rate, delta)
  local full_at = tonumber(redis.call("GET", key))
  local start = now
  if full_at ~= nil and full_at >= now then start = full_at end
  local new = start + delta / rate
  local applied = delta
  if new <= now then
    applied = (now - start) * rate
    redis.call("DEL", key)
  else
    redis.call("SET", key, string.format("%.17g", new), "PX", math.max(1, math.ceil(new - now) + 1000))
  end
  return string.format("%.17g", applied)
end

if mode == "take" then
  local record = redis.call("LRANGE", KEYS[1], 0, -1)
  if #record == 0 then return { "absent" } end
  redis.call("DEL", KEYS[1])
  if tonumber(record[1]) <= now then
    local out = { "expired", record[1] }
    for i = 4, #record, 4 do
      out[#out + 1] = record[i]
      out[#out + 1] = record[i + 3]
      out[#out + 1] = record[i + 2]
      out[#out + 1] = ""
      out[#out + 1] = ""
    end
    return out
  end
  redis.call("ZREM", record[3], ARGV[3])  -- no longer outstanding at its maker
  local input = tonumber(ARGV[4])
  local output = tonumber(ARGV[5])
  local cost = tonumber(ARGV[6])
  local tokens = nil
  if output ~= nil then
    if input == nil then input = tonumber(record[2]) end
    tokens = input + output
  end
  local out = { "settled", record[1] }
  for i = 4, #record, 4 do
    local key, rate, estimate, unit = record[i], tonumber(record[i + 1]), tonumber(record[i + 2]), record[i + 3]
    local actual = tokens
    if unit == "s" then actual = cost end
    out[#out + 1] = key
    out[#out + 1] = unit
    out[#out + 1] = record[i + 2]
    if actual == nil then
      out[#out + 1] = ""
    else
      out[#out + 1] = string.format("%.17g", actual)
    end
    if actual ~= nil and actual ~= estimate then
      out[#out + 1] = adjust(key, rate, actual - estimate)
    else
      out[#out + 1] = ""
    end
  end
  return out
end

if mode == "count" then
  local swept = redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", ARGV[2])
  local boxed = tonumber(redis.call("GET", KEYS[2]) or "0")
  redis.call("DEL", KEYS[2])
  return { redis.call("ZCARD", KEYS[1]), swept + boxed }
end

local out = {}
for i = 1, #KEYS do
  out[i] = adjust(KEYS[i], tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2]))
end
return out
