-- History: ARGV[4] = first stream id wanted ("<after + 1>-0"), ARGV[5] = after, ARGV[6] = most
-- messages, ARGV[7] = most payload bytes (a page always has at least one message).
-- Returns {seq, epoch, id1, data1, exclude1, id2, data2, exclude2, ...} (exclude: the `x` field,
-- "" when the entry has none): one page of the messages with seq > after
-- that are younger than the ttl, read atomically with the top.
--
-- Entries are read in small batches, so a page of large messages never materialises much more
-- than the page itself inside Redis: the script's time stays bounded by the page, not by the
-- history.
local BATCH = 16
local epoch, seq = topic_state()
seq = visible(seq)
local out = {seq, epoch}
if seq > tonumber(ARGV[5]) then
  local cutoff = now_ms() - tonumber(ARGV[2])
  local limit = tonumber(ARGV[6])
  local max_bytes = tonumber(ARGV[7])
  local batch = math.min(limit, BATCH)
  local bytes = 0
  local start = ARGV[4]
  while true do
    local entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', batch)
    for _, entry in ipairs(entries) do
      if tonumber(string.match(entry[1], '^(%d+)-')) > seq then
        -- Not acknowledged yet (lineage mode): not readable.
        return out
      end
      local fields = entry[2]
      local data, at, exclude = nil, nil, ''
      for i = 1, #fields, 2 do
        if fields[i] == 'd' then
          data = fields[i + 1]
        elseif fields[i] == 't' then
          at = tonumber(fields[i + 1])
        elseif fields[i] == 'x' then
          exclude = fields[i + 1]
        end
      end
      if data == nil or at == nil then
        return redis.error_reply('corrupt history entry ' .. entry[1])
      end
      if at <= cutoff then
        -- Too old. Dropping everything up to here (not just this entry) keeps the page a
        -- contiguous suffix of the history even if the server clock stepped back, so `recover`
        -- never sees a hole.
        out = {seq, epoch}
        bytes = 0
      else
        if #out > 2 and (bytes + #data > max_bytes or #out - 2 >= 3 * limit) then
          return out
        end
        out[#out + 1] = entry[1]
        out[#out + 1] = data
        out[#out + 1] = exclude
        bytes = bytes + #data
      end
    end
    if #entries < batch then
      return out
    end
    -- Go on after the batch's last entry (the stream is capped, so this ends).
    local last_seq = tonumber(string.match(entries[#entries][1], '^(%d+)-'))
    start = string.format('%d-0', last_seq + 1)
  end
end
return out
