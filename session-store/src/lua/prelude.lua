-- Shared head of every topic script (the Rust side prepends it to each one).
--
-- KEYS[1] = seq key, KEYS[2] = history stream, KEYS[3] = epoch key (one hash slot: the topic is
-- the hash tag). ARGV[1] = a fresh random epoch, used only when a new history starts.
-- ARGV[2] = history ttl in milliseconds.

-- Effects replication: TIME is non-deterministic, so replicas must receive the writes, not the
-- script. Redis 5+ does this by default; the call is a no-op there and needed on older servers.
if redis.replicate_commands then
  redis.replicate_commands()
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The topic's epoch and latest seq, starting a new history when either key is missing.
--
-- A topic is valid only while BOTH keys exist: `top` creates them together (seq 0) and `append`
-- refreshes their ttl together. If one is gone (expired, evicted under maxmemory, flushed) the
-- positions clients hold can no longer be trusted, so a new epoch starts with seq 0 and the stale
-- stream is deleted (its last id would also refuse the restarted ids).
local function topic_state()
  local epoch = redis.call('GET', KEYS[3])
  local seq = redis.call('GET', KEYS[1])
  if epoch and seq then
    return epoch, tonumber(seq)
  end
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[1], '0', 'PX', ARGV[2])
  redis.call('DEL', KEYS[2])
  return ARGV[1], 0
end
