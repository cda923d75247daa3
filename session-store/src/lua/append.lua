-- Append: ARGV[3] = payload (JSON text), ARGV[4] = history max length (0 = keep no history).
-- Returns {seq, epoch}.
local epoch, seq = topic_state()
seq = seq + 1
local max_len = tonumber(ARGV[4])
if max_len > 0 then
  -- XADD before INCR: a failing XADD (e.g. out of memory) then leaves no seq without its message.
  -- Scripts are not rolled back on error, so the order is what keeps history gap-free.
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], string.format('%d-1', seq),
    'd', ARGV[3], 't', string.format('%d', now_ms()))
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
else
  -- History switched off (possibly after running with it): keep none, as the memory store does.
  redis.call('DEL', KEYS[2])
end
seq = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return {seq, epoch}
