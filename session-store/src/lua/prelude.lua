-- Shared head of every topic script (the Rust side prepends it to each one).
--
-- KEYS[1] = seq key, KEYS[2] = history stream, KEYS[3] = epoch key, KEYS[4] = acknowledged-seq
-- key (one hash slot: the topic is the hash tag). ARGV[1] = a fresh epoch (16 hex digits,
-- time-prefixed), used only when a new history starts. ARGV[2] = history ttl in milliseconds.
-- ARGV[3] = "strict" or "lineage" (the gateway waits for replicas: see `incarnation_ok`).

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

local LINEAGE = ARGV[3] == 'lineage'
local NO_REPLID = '0000000000000000000000000000000000000000'

-- The server's replication id, and the one before it. The id changes on every restart (from an
-- RDB snapshot, an AOF that lost its last second, a restored backup) and on every promotion of a
-- replica (which keeps the old id as its second one). Stored with each topic's epoch, it tells
-- whether the data may have gone backwards since it was written.
local function incarnation()
  local info = redis.call('INFO', 'replication')
  return string.match(info, 'master_replid:(%x+)') or '?',
    string.match(info, 'master_replid2:(%x+)') or NO_REPLID
end

-- Whether data written under incarnation `inc` can be trusted now. Always when it is the current
-- one. In lineage mode (`--redis-min-replicas`: every acknowledged append reached a replica
-- before it was acknowledged) also when this server is the replica promoted from it: the data
-- it lacks was never acknowledged, and readers never saw it (see `visible`).
local function incarnation_ok(inc, current, previous)
  if inc == current then
    return true
  end
  return LINEAGE and inc == previous and previous ~= NO_REPLID
end

-- The last seq readers may see. In lineage mode that is the last acknowledged one: a message
-- appended but not yet on enough replicas would be lost by a failover, so nobody may read it.
local function visible(seq)
  if not LINEAGE then
    return seq
  end
  return math.min(seq, tonumber(redis.call('GET', KEYS[4]) or '0'))
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
  redis.call('DEL', KEYS[2], KEYS[4])
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
-- A topic is valid only while BOTH its seq and epoch keys exist and the epoch was written under
-- an incarnation that can be trusted: `top` creates them together (seq 0) and `append` refreshes
-- their ttl together. If one is gone (expired, evicted under maxmemory, flushed), or the server
-- restarted or failed over since (see `incarnation_ok`), the positions clients hold can no longer
-- be trusted, so a new, later epoch starts with seq 0.
local function topic_state()
  local epoch, inc = stored_epoch()
  local seq = redis.call('GET', KEYS[1])
  local current, previous = incarnation()
  if epoch and seq and incarnation_ok(inc, current, previous) then
    if inc ~= current then
      -- Promoted replica of the same lineage: carry the epoch over to this incarnation. All it
      -- holds survived the failover, so all of it is readable (the acknowledgement of its last
      -- appends may not have been replicated yet).
      redis.call('SET', KEYS[3], epoch .. '|' .. current, 'KEEPTTL')
      redis.call('SET', KEYS[4], seq, 'PX', ARGV[2])
    end
    return epoch, tonumber(seq)
  end
  return restart_topic(epoch, current)
end
