-- policyctl: a decision's check-and-consume (redis_gcra.lua, run unchanged as `gcra` below)
-- with its affinity pin written for the candidate it admitted, in the same call: when a
-- rate limit skipped the model the pin script (redis_pin.lua) pinned, the pin follows the
-- request at no extra round trip.
--
-- KEYS: redis_gcra.lua's, then the pin's key.
-- ARGV: redis_gcra.lua's, then the pin's value up to its model (`at|input_tokens|`), its
--       keep_ms (PX), the model of each candidate in ranking order, and last the count of
--       these pin arguments. They are taken off KEYS and ARGV before `gcra` runs.
-- Returns what redis_gcra.lua returns.

local n = tonumber(ARGV[#ARGV])
local base = #ARGV - 1 - n
local pin_key = KEYS[#KEYS]
local prefix = ARGV[base + 1]
local keep = ARGV[base + 2]
local models = {}
for i = base + 3, #ARGV - 1 do models[#models + 1] = ARGV[i] end
for i = #ARGV, base + 1, -1 do ARGV[i] = nil end
KEYS[#KEYS] = nil

local function gcra()
--[[redis_gcra.lua]]
end

local result = gcra()
local option = tonumber(result[1])
if option ~= nil and option >= 0 and models[option + 1] ~= nil then
  redis.call("SET", pin_key, prefix .. models[option + 1], "PX", keep)
end
return result
