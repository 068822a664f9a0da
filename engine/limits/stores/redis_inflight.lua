-- policyctl: in-flight slots (`concurrent` limits), atomically (all-or-nothing).
-- The same algorithm as MemoryStore.take_slots / release_slots (the reference): a gauge is
-- a sorted set of leases scored by their expiry (ms); an expired lease is a free slot.
--
-- take: KEYS: every gauge key, then the lease's record (the set of gauges it holds).
--       ARGV: "take", now_ms, consume (0/1), lease, then per gauge: limit, expires_at.
--       Returns: { failed (0: none, else 1-based gauge), soonest expiry of the full gauge
--                  ("" when none), then the slots each gauge held before, up to the full one }
-- release: KEYS: the lease's record. ARGV: "release", lease. Returns the slots freed.
--
-- On a Redis Cluster (redis_cluster_store.py) a lease's gauges may span slots, one record
-- per slot; its directory (a set of those slots' tags, in the lease's own slot) says where.
-- A directory may be written after the decision (per-key gauges taken in the bucket call,
-- their directories written in batches): a release that comes first leaves a mark, `!`.
-- note: KEYS: the directory. ARGV: "note", keep_ms (PEXPIRE), then every tag. Returns 1;
--       0 when a release was marked first (the directory is gone: the caller releases).
-- where: KEYS: the directory. ARGV: "where". Takes it out (deleted: a second call finds
--        nothing). Returns the tags (none while only a mark is there).
-- mark: KEYS: the directory. ARGV: "mark", keep_ms. A directory written since: taken out,
--       its tags returned; else the mark left for its note, and nothing returned.

if ARGV[1] == "note" then
  if redis.call("SISMEMBER", KEYS[1], "!") == 1 then
    redis.call("DEL", KEYS[1])
    return 0
  end
  redis.call("SADD", KEYS[1], unpack(ARGV, 3))
  local keep = tonumber(ARGV[2])
  if redis.call("PTTL", KEYS[1]) < keep then redis.call("PEXPIRE", KEYS[1], keep) end
  return 1
end
if ARGV[1] == "where" or ARGV[1] == "mark" then
  local tags = redis.call("SMEMBERS", KEYS[1])
  for _, tag in ipairs(tags) do
    if tag == "!" then return {} end
  end
  if #tags > 0 then
    redis.call("DEL", KEYS[1])
  elseif ARGV[1] == "mark" then
    redis.call("SADD", KEYS[1], "!")
    redis.call("PEXPIRE", KEYS[1], tonumber(ARGV[2]))
  end
  return tags
end

if ARGV[1] == "release" then
  local record = KEYS[1]
  local lease = ARGV[2]
  local freed = 0
  for _, key in ipairs(redis.call("SMEMBERS", record)) do
    freed = freed + redis.call("ZREM", key, lease)
  end
  redis.call("DEL", record)
  return freed
end

local now = tonumber(ARGV[2])
local consume = ARGV[3] == "1"
local lease = ARGV[4]
local n = #KEYS - 1
local held = {}
for i = 1, n do
  local key = KEYS[i]
  redis.call("ZREMRANGEBYSCORE", key, "-inf", ARGV[2])  -- expired: score <= now
  local count = redis.call("ZCARD", key)
  held[#held + 1] = tostring(count)
  local limit = tonumber(ARGV[4 + (i - 1) * 2 + 1])
  if count >= limit or redis.call("ZSCORE", key, lease) then
    local first = redis.call("ZRANGE", key, 0, 0, "WITHSCORES")
    local result = { tostring(i), first[2] or "" }
    for j = 1, #held do result[#result + 1] = held[j] end
    return result
  end
end
if consume then
  local record = KEYS[n + 1]
  local longest = now
  for i = 1, n do
    local expires = tonumber(ARGV[4 + (i - 1) * 2 + 2])
    if expires > longest then longest = expires end
    redis.call("ZADD", KEYS[i], ARGV[4 + (i - 1) * 2 + 2], lease)
    -- the set outlives its longest lease (an idle gauge goes by itself)
    local ttl = math.ceil(expires - now) + 1000
    if redis.call("PTTL", KEYS[i]) < ttl then redis.call("PEXPIRE", KEYS[i], ttl) end
    redis.call("SADD", record, KEYS[i])
  end
  redis.call("PEXPIRE", record, math.ceil(longest - now) + 1000)
end
local result = { "0", "" }
for j = 1, #held do result[#result + 1] = held[j] end
return result
