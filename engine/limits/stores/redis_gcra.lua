-- policyctl: one decision's check-and-consume, atomically (all-or-nothing).
-- The same algorithm as engine/limits/stores/memory.py (the reference), in GCRA form: a bucket
-- is one number, the time (ms) at which it is full again; absent means full.
--
-- KEYS: every bucket key, shared ones first, then each option's in order.
-- ARGV: now_ms, consume (0/1), n_shared, n_options, then the size of each option, then
--       for every key in KEYS order: capacity, rate (tokens per ms), cost.
-- Returns: { option index (-1: denied), failed position (0: none, else 1-based in the
--            returned outcomes), then per returned bucket: available, allowed (0/1),
--            full_at } with numbers as strings (Lua floats would be truncated).
--
-- Reserve-then-settle (`RedisStore.acquire_reserving`): three more KEYS after the buckets
-- (the reservation record, this store's set of outstanding reservations, its mailbox of
-- expired ones) and, after the specs' ARGV: request id, input tokens, expires_at (ms, the
-- engine's clock), keep (ms of PEXPIRE past expires_at, cleanup only), and one character per
-- spec in KEYS order: `t` (a tokens bucket), `s` (spend) or `-` (not reserved). When the
-- decision is admitted (and consumes), its reserved buckets are written to the record, a
-- list: expires_at, input tokens, the outstanding set's key, then per bucket: key, rate,
-- estimate (its cost), unit; a live record under the same id gets them appended (a shadow
-- limit's second call). The outstanding set (request id scored by expires_at) is swept
-- first: the expired ones are counted into the mailbox (`redis_settle.lua` `count` reads it).

local now = tonumber(ARGV[1])
local consume = ARGV[2] == "1"
local n_shared = tonumber(ARGV[3])
local n_options = tonumber(ARGV[4])
local sizes = {}
for i = 1, n_options do sizes[i] = tonumber(ARGV[4 + i]) end
local base = 4 + n_options
local n_specs = n_shared
for i = 1, n_options do n_specs = n_specs + sizes[i] end
local reserving = consume and #KEYS > n_specs

local function spec(i)
  local a = base + (i - 1) * 3
  return KEYS[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
end

-- each key is read once: what `check` read (or `take` wrote) is what `take` starts from
local seen = {}
local function level(key)
  local value = seen[key]
  if value == nil then
    value = redis.call("GET", key)
    seen[key] = value
  end
  return tonumber(value)
end

local function check(i)
  local key, capacity, rate, cost = spec(i)
  local full_at = level(key)
  local have = capacity
  if full_at == nil or full_at <= now then
    full_at = now  -- full: as if absent (the memory store evicts such buckets)
  else
    have = capacity - (full_at - now) * rate
  end
  -- slack: 1e-9 tokens, and 0.01 ms of refill (TIME_SLACK_MS in stores/base.py)
  return { have, have + 1e-9 + rate * 0.01 >= cost, full_at }
end

local function take(i)
  local key, capacity, rate, cost = spec(i)
  local full_at = level(key)
  local start = now
  if full_at ~= nil and full_at >= now then start = full_at end
  local new = start + cost / rate
  local text = string.format("%.17g", new)
  redis.call("SET", key, text, "PX", math.max(1, math.ceil(new - now) + 1000))
  seen[key] = text
  return new
end

local function reserve(positions)
  local t = base + 3 * n_specs
  local flags = ARGV[t + 5]
  local items = {}
  for j = 1, #positions do
    local i = positions[j]
    local unit = string.sub(flags, i, i)
    if unit ~= "-" then
      local a = base + (i - 1) * 3
      items[#items + 1] = KEYS[i]
      items[#items + 1] = ARGV[a + 2]  -- rate
      items[#items + 1] = ARGV[a + 3]  -- the estimate: the cost it took
      items[#items + 1] = unit
    end
  end
  if #items == 0 then return end
  local record, outstanding, mailbox = KEYS[n_specs + 1], KEYS[n_specs + 2], KEYS[n_specs + 3]
  local expires_at = ARGV[t + 3]
  local ttl = math.max(1, math.ceil(tonumber(expires_at) - now)) + tonumber(ARGV[t + 4])
  local swept = redis.call("ZREMRANGEBYSCORE", outstanding, "-inf", ARGV[1])  -- score <= now
  if swept > 0 then
    redis.call("INCRBY", mailbox, swept)
    redis.call("PEXPIRE", mailbox, ttl)
  end
  local live = tonumber(redis.call("LINDEX", record, 0))
  if live ~= nil and live > now then
    redis.call("RPUSH", record, unpack(items))
  else  -- none, or an expired one under a reused id (its maker counts it expired)
    redis.call("DEL", record)
    redis.call("RPUSH", record, expires_at, ARGV[t + 2], outstanding, unpack(items))
    redis.call("ZADD", outstanding, expires_at, ARGV[t + 1])
    if redis.call("PTTL", outstanding) < ttl then redis.call("PEXPIRE", outstanding, ttl) end
  end
  if redis.call("PTTL", record) < ttl then redis.call("PEXPIRE", record, ttl) end
end

local out = {}
local positions = {}
local failed = 0
for i = 1, n_shared do
  local r = check(i)
  out[#out + 1] = r
  positions[#positions + 1] = i
  if not r[2] then failed = #out; break end
end

local function reply(option)
  local result = { tostring(option), tostring(failed) }
  for j = 1, #out do
    result[#result + 1] = string.format("%.17g", out[j][1])
    result[#result + 1] = out[j][2] and "1" or "0"
    result[#result + 1] = string.format("%.17g", out[j][3])
  end
  return result
end

if failed > 0 then return reply(-1) end

local first = n_shared + 1
local shared_out = #out
for o = 1, n_options do
  -- drop the previous option's outcomes
  for j = #out, shared_out + 1, -1 do out[j] = nil; positions[j] = nil end
  failed = 0
  for i = first, first + sizes[o] - 1 do
    local r = check(i)
    out[#out + 1] = r
    positions[#positions + 1] = i
    if not r[2] then failed = #out; break end
  end
  if failed == 0 then
    if consume then
      for j = 1, #out do out[j][3] = take(positions[j]) end
      if reserving then reserve(positions) end
    end
    return reply(o - 1)
  end
  first = first + sizes[o]
end

if n_options == 0 then
  if consume then
    for j = 1, #out do out[j][3] = take(positions[j]) end
    if reserving then reserve(positions) end
  end
  return reply(0)
end
return reply(-1)
