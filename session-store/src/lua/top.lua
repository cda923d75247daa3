-- Top: returns {seq, epoch}, creating the epoch (with seq 0) for a topic without history.
local epoch, seq = topic_state()
return {visible(seq), epoch}
