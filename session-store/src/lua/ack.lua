-- Acknowledge (lineage mode): ARGV[4] = a seq that enough replicas have, ARGV[5] = its epoch.
-- Makes it (and, the replication stream being ordered, everything before it) readable.
-- Returns {seq, epoch} as readers see them afterwards.
local epoch, seq = topic_state()
if epoch == ARGV[5] then
  local acked = tonumber(redis.call('GET', KEYS[4]) or '0')
  if tonumber(ARGV[4]) > acked then
    redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[2])
  end
end
return {visible(seq), epoch}
