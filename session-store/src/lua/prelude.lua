-- Shared head of every topic script (the Rust side prepends it to each one).
--
-- KEYS[1] = seq key, KEYS[2] = history stream, KEYS[3] = epoch key (one hash slot: the topic is
-- the hash tag). ARGV[1] = a fresh epoch (16 hex digits, time-prefixed), used only when a new
-- history starts. ARGV[2] = history ttl in milliseconds.

-- Effects replication: TIME and INFO are non-deterministic, so replicas must receive the writes,
-- not the script. Redis 5+ does this by default; the call is a no-op there and needed on older
-- servers.
if redis.replicate_commands then
  redis.replicate_commands()
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- This server process: its run id changes on every restart, and a promoted replica has its own.
-- Stored with each topic's epoch, it tells whether the data may have gone backwards since: a
-- restart from an RDB snapshot or an AOF that lost its last second, a failover to a replica
-- that lagged, a restored backup all come back with a different run id and data that looks
-- valid but is older than what clients were sent.
local function incarnation()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '?'
end

-- An epoch newer than `old`: the fresh one from ARGV[1], unless the clock says otherwise (a
-- failover to a node whose clock is behind), then one millisecond after `old`. Epochs are
-- 12 hex digits of milliseconds and 4 random ones; older versions used 8 random digits, which
-- order before any 16-digit epoch.
local function next_epoch(old)
  local fresh = ARGV[1]
  if old and #old == #fresh and old >= fresh then
    local ms = tonumber(string.sub(old, 1, 12), 16) + 1
    return string.format('%012x', ms) .. string.sub(fresh, 13)
  end
  return fresh
end

-- Starts a new history under a new epoch: seq 0, no messages. The stale stream is deleted (its
-- last id would also refuse the restarted ids).
local function restart_topic(old, inc)
  local epoch = next_epoch(old)
  redis.call('SET', KEYS[3], epoch .. '|' .. inc, 'PX', ARGV[2])
  redis.call('SET', KEYS[1], '0', 'PX', ARGV[2])
  redis.call('DEL', KEYS[2])
  return epoch, 0
end

-- The topic's epoch (as stored: "<epoch>|<incarnation>") split in two.
local function stored_epoch()
  local stored = redis.call('GET', KEYS[3])
  if not stored then
    return nil, nil
  end
  local epoch, inc = string.match(stored, '^([^|]*)|(.*)$')
  if not epoch then
    return stored, nil
  end
  return epoch, inc
end

-- The topic's epoch and latest seq, starting a new history when they cannot be trusted.
--
-- A topic is valid only while BOTH its seq and epoch keys exist and the epoch was written by this
-- server process: `top` creates them together (seq 0) and `append` refreshes their ttl together.
-- If one is gone (expired, evicted under maxmemory, flushed), or the server is another process
-- than the one that wrote the epoch (restart, failover), the positions clients hold can no
-- longer be trusted, so a new, later epoch starts with seq 0.
local function topic_state()
  local epoch, inc = stored_epoch()
  local seq = redis.call('GET', KEYS[1])
  local current = incarnation()
  if epoch and seq and inc == current then
    return epoch, tonumber(seq)
  end
  return restart_topic(epoch, current)
end
