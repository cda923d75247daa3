-- Shared head of the presence scripts that assign or read `pseq` (the Rust side prepends it).
-- KEYS[3] = the topic's presence position, "<epoch>|<master_replid>|<pseq>"; KEYS[4] = its
-- join/leave log, a stream with ids "<pseq>-1" and fields k ('j' or 'l'), s (session), u (user
-- key) and, when the member has info, i (its compact JSON). One hash slot with the members (the topic is the hash tag), so an event's pseq is
-- assigned in the same script that changes the members.
--
-- Same epoch rules as messages: the position is trusted only while its key exists and was
-- written under the current replication id. A flushed, evicted or expired key, a restart or a
-- failover starts a new, later epoch at pseq 0 with an empty log, so a client position from
-- before is visibly unrecoverable instead of meeting reused pseq numbers. (Presence writes do
-- not wait for replicas, so unlike messages no failover keeps the epoch.)

if redis.replicate_commands then
  redis.replicate_commands()
end

local function log_incarnation()
  local info = redis.call('INFO', 'replication')
  return string.match(info, 'master_replid:(%x+)') or '?'
end

-- The trusted epoch and pseq of the topic, starting a new epoch (after `fresh`, which is
-- 16 hex digits, time first) when there is none.
local function log_position(fresh, ttl)
  local inc = log_incarnation()
  local stored = redis.call('GET', KEYS[3])
  local epoch, stored_inc, pseq
  if stored then
    epoch, stored_inc, pseq = string.match(stored, '^([^|]*)|([^|]*)|(%d+)$')
    if epoch and stored_inc == inc then
      return epoch, tonumber(pseq), inc
    end
  end
  if epoch and #epoch == #fresh and epoch >= fresh then
    -- A clock behind the one that made the old epoch: still order after it.
    local ms = tonumber(string.sub(epoch, 1, 12), 16) + 1
    fresh = string.format('%012x', ms) .. string.sub(fresh, 13)
  end
  redis.call('DEL', KEYS[4])
  redis.call('SET', KEYS[3], fresh .. '|' .. inc .. '|0', 'PX', ttl)
  return fresh, 0, inc
end

-- Appends one event to the log (trimmed to `size`); returns its pseq.
local function log_event(pseq, kind, session, user, info, size)
  pseq = pseq + 1
  if info == '' then
    redis.call('XADD', KEYS[4], 'MAXLEN', size, pseq .. '-1', 'k', kind, 's', session, 'u', user)
  else
    redis.call('XADD', KEYS[4], 'MAXLEN', size, pseq .. '-1', 'k', kind, 's', session, 'u', user,
      'i', info)
  end
  return pseq
end

-- The owner, expiry, user key and info ('' for none) of a stored member value (see
-- apply.lua); nil when it is not one.
local function member_parts(value)
  local owner, expires, tail = string.match(value, '^([^|]*)|(%d+)|(.*)$')
  if not owner then
    return nil
  end
  if string.sub(tail, 1, 1) ~= 'i' then
    return owner, expires, tail, ''
  end
  local len = string.match(tail, '^i(%d+):')
  if not len then
    return nil
  end
  local start = #len + 3
  local info = string.sub(tail, start, start + tonumber(len) - 1)
  return owner, expires, string.sub(tail, start + tonumber(len)), info
end

-- The info stored in a member value ('' for none).
local function member_info(value)
  local _, _, _, info = member_parts(value)
  return info or ''
end

local function log_save(epoch, inc, pseq, ttl)
  redis.call('SET', KEYS[3], epoch .. '|' .. inc .. '|' .. pseq, 'PX', ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
