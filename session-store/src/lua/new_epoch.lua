-- New epoch: ARGV[4] = the epoch the caller found stale. Moves the topic to a new epoch (seq 0,
-- empty history) if it still has that one; returns {seq, epoch} afterwards.
local epoch, seq = topic_state()
if epoch == ARGV[4] then
  epoch, seq = restart_topic(epoch, incarnation())
end
return {visible(seq), epoch}
