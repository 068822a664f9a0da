-- policyctl on a Redis Cluster: where a decision's reservation parts are (docs/redis.md,
-- Cluster). A decision's buckets span several slots, so its reservation record is split: one
-- part per slot, `{TAG}:r:<request id>`, written by that slot's `redis_gcra.lua` call. The
-- directory, `{policyctl}:rd:<request id>` (a hash: `e` expires_at, `o` its maker's
-- outstanding set, `t:<TAG>` per part), lets whichever instance receives the outcome find
-- the parts; it lives in the shared slot with the makers' outstanding sets.
--
-- note: KEYS: the directory, the maker's outstanding set, its mailbox of expired ones.
--       ARGV: "note", now_ms, request id, expires_at (ms), keep_ms, then every part's TAG.
--       Sweeps the outstanding set (expired ones counted into the mailbox, as redis_gcra.lua
--       does); a live directory under the id gets the tags added (a shadow limit's second
--       call), else a new one is written and the id made outstanding. Returns the tags held.
-- take: KEYS: the directory. ARGV: "take", now_ms, request id. Takes the directory out
--       (deleted first: a second call finds nothing). Returns { "absent" } | { "expired" }
--       (past expires_at on the engine's clock: its maker's sweep counts it) |
--       { "settled", then every part's TAG } (and the id is no longer outstanding).

local now = tonumber(ARGV[2])
if ARGV[1] == "take" then
  local fields = redis.call("HGETALL", KEYS[1])
  if #fields == 0 then return { "absent" } end
  redis.call("DEL", KEYS[1])
  local record = {}
  local out = { "settled" }
  for i = 1, #fields, 2 do
    local name = fields[i]
    if string.sub(name, 1, 2) == "t:" then
      out[#out + 1] = string.sub(name, 3)
    else
      record[name] = fields[i + 1]
    end
  end
  if tonumber(record["e"]) <= now then return { "expired" } end
  redis.call("ZREM", record["o"], ARGV[3])
  return out
end

local directory, outstanding, mailbox = KEYS[1], KEYS[2], KEYS[3]
local expires_at = ARGV[4]
local ttl = math.max(1, math.ceil(tonumber(expires_at) - now)) + tonumber(ARGV[5])
local swept = redis.call("ZREMRANGEBYSCORE", outstanding, "-inf", ARGV[2])  -- score <= now
if swept > 0 then
  redis.call("INCRBY", mailbox, swept)
  redis.call("PEXPIRE", mailbox, ttl)
end
local live = tonumber(redis.call("HGET", directory, "e"))
if live == nil or live <= now then  -- none, or an expired one under a reused id
  redis.call("DEL", directory)
  redis.call("HSET", directory, "e", expires_at, "o", outstanding)
  redis.call("ZADD", outstanding, expires_at, ARGV[3])
  if redis.call("PTTL", outstanding) < ttl then redis.call("PEXPIRE", outstanding, ttl) end
end
for i = 6, #ARGV do redis.call("HSET", directory, "t:" .. ARGV[i], "1") end
if redis.call("PTTL", directory) < ttl then redis.call("PEXPIRE", directory, ttl) end
return redis.call("HLEN", directory) - 2
