-- History: ARGV[3] = first stream id wanted ("<after + 1>-0"), ARGV[4] = after.
-- Returns {seq, epoch, id1, data1, id2, data2, ...} for messages with seq > after that are younger
-- than the ttl, read atomically with the top.
local epoch, seq = topic_state()
local out = {seq, epoch}
if seq > tonumber(ARGV[4]) then
  local cutoff = now_ms() - tonumber(ARGV[2])
  local entries = redis.call('XRANGE', KEYS[2], ARGV[3], '+')
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    local data, at
    for i = 1, #fields, 2 do
      if fields[i] == 'd' then
        data = fields[i + 1]
      elseif fields[i] == 't' then
        at = tonumber(fields[i + 1])
      end
    end
    if data == nil or at == nil then
      return redis.error_reply('corrupt history entry ' .. entry[1])
    end
    if at <= cutoff then
      -- Too old. Dropping everything up to here (not just this entry) keeps the page a contiguous
      -- suffix of the history even if the server clock stepped back, so `recover` never sees a hole.
      out = {seq, epoch}
    else
      out[#out + 1] = entry[1]
      out[#out + 1] = data
    end
  end
end
return out
