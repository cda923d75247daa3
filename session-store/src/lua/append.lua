-- Append: ARGV[4] = payload (JSON text), ARGV[5] = history max length (0 = keep no history),
-- ARGV[6] = publish id ("" = none), ARGV[7] = dedup window in ms, ARGV[8] = the session excluded
-- from delivery ("" = none; kept as field `x` so replays to it skip the message).
-- KEYS[5] = the id's dedup key. Optionally an event staged with the message (see `Stage` in
-- lib.rs): KEYS[6] = its hash (on this topic's slot), ARGV[9] = its id, ARGV[10] = its JSON up
-- to the seq.
-- Returns {seq, epoch, duplicate (0/1)}.
local epoch, seq = topic_state()
if ARGV[6] ~= '' then
  -- A retry of a publish already stored in this epoch: answer what the first one got.
  local seen = redis.call('GET', KEYS[5])
  if seen then
    local seen_seq, seen_epoch = string.match(seen, '^(%d+)|(.*)$')
    if seen_epoch == epoch then
      -- Touch the id's key (same value, same expiry): this call then writes, so a WAIT after it
      -- (--redis-min-replicas) waits until the replicas reach this point of the replication
      -- stream, past the first append. Without a write, WAIT would only cover this connection's
      -- earlier writes, while the first append may have been made on another connection or pod
      -- and never reached a replica (that is why it was retried).
      local ttl = redis.call('PTTL', KEYS[5])
      if ttl > 0 then
        redis.call('PEXPIRE', KEYS[5], ttl)
      end
      return {tonumber(seen_seq), epoch, 1}
    end
  end
end
seq = seq + 1
local max_len = tonumber(ARGV[5])
if max_len > 0 then
  -- XADD before INCR: a failing XADD (e.g. out of memory) then leaves no seq without its message.
  -- Scripts are not rolled back on error, so the order is what keeps history gap-free.
  if ARGV[8] ~= '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], string.format('%d-1', seq),
      'd', ARGV[4], 't', string.format('%d', now_ms()), 'x', ARGV[8])
  else
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], string.format('%d-1', seq),
      'd', ARGV[4], 't', string.format('%d', now_ms()))
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
else
  -- History switched off (possibly after running with it): keep none, as the memory store does.
  redis.call('DEL', KEYS[2])
end
seq = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[5], string.format('%d', seq) .. '|' .. epoch, 'PX', ARGV[7])
end
if KEYS[6] then
  redis.call('HSET', KEYS[6], ARGV[9], ARGV[10] .. string.format('%d', seq) .. ',"epoch":'
    .. cjson.encode(epoch) .. ',"data":' .. ARGV[4] .. '}}')
end
return {seq, epoch, 0}
