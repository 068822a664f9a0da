-- policyctl: one decision's affinity pin (docs/language.md, Session affinity), read and
-- written in one call, so that every instance on this Redis pins a session the same way.
--
-- KEYS[1]: the pin, `{policyctl}:p:ROUTE:KEYHASH`, a string `at|input_tokens|model`
--          (`at`: epoch seconds of the key's last request, on the engines' clock).
-- ARGV: now (epoch s), ttl_ms (the route's duration), keep_ms (PX: cleanup only),
--       write (0/1), input_tokens, default model, then every eligible model.
-- The pin is live when (now - at) * 1000 <= ttl_ms: the engines' clock decides, never PX.
-- With write, the key is pinned at `now` to the live pin's model when that is eligible,
-- else to the default (where the strategy sends the request).
-- Returns { the old value or "", live (0/1), the model written or "" }.

local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local old = redis.call("GET", KEYS[1])
local live = "0"
local model = ARGV[6]
if old then
  local first = string.find(old, "|", 1, true)
  local second = first and string.find(old, "|", first + 1, true)
  local at = first and tonumber(string.sub(old, 1, first - 1))
  if second and at and (now - at) * 1000 <= ttl then
    live = "1"
    local pinned = string.sub(old, second + 1)
    for i = 7, #ARGV do
      if ARGV[i] == pinned then model = pinned; break end
    end
  end
else
  old = ""
end
if ARGV[4] == "1" then
  redis.call("SET", KEYS[1], ARGV[1] .. "|" .. ARGV[5] .. "|" .. model, "PX", ARGV[3])
else
  model = ""
end
return { old, live, model }
