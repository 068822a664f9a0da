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

local now = tonumber(ARGV[1])
local consume = ARGV[2] == "1"
local n_shared = tonumber(ARGV[3])
local n_options = tonumber(ARGV[4])
local sizes = {}
for i = 1, n_options do sizes[i] = tonumber(ARGV[4 + i]) end
local base = 4 + n_options

local function spec(i)
  local a = base + (i - 1) * 3
  return KEYS[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
end

local function check(i)
  local key, capacity, rate, cost = spec(i)
  local full_at = tonumber(redis.call("GET", key))
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
  local full_at = tonumber(redis.call("GET", key))
  local start = now
  if full_at ~= nil and full_at >= now then start = full_at end
  local new = start + cost / rate
  redis.call("SET", key, string.format("%.17g", new), "PX", math.max(1, math.ceil(new - now) + 1000))
  return new
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
    end
    return reply(o - 1)
  end
  first = first + sizes[o]
end

if n_options == 0 then
  if consume then
    for j = 1, #out do out[j][3] = take(positions[j]) end
  end
  return reply(0)
end
return reply(-1)
