-- History backwards: ARGV[4] = the end of the range ("(<before>-0": every id below seq
-- `before`; "+": from the newest), ARGV[5] = most messages, ARGV[6] = most payload bytes (a page
-- always has at least one message).
-- Returns {seq, epoch, id1, data1, exclude1, id2, data2, exclude2, ...} (exclude: the `x` field,
-- "" when the entry has none): one page of the messages with seq < before
-- that are younger than the ttl, newest first, read atomically with the top.
--
-- The newest-first twin of history.lua, read with XREVRANGE in small batches for the same
-- reason: the script's time stays bounded by the page, not by the history.
local BATCH = 16
local epoch, seq = topic_state()
seq = visible(seq)
local out = {seq, epoch}
if seq == 0 then
  return out
end
local cutoff = now_ms() - tonumber(ARGV[2])
local limit = tonumber(ARGV[5])
local max_bytes = tonumber(ARGV[6])
local batch = math.min(limit, BATCH)
local bytes = 0
local finish = ARGV[4]
while true do
  local entries = redis.call('XREVRANGE', KEYS[2], finish, '-', 'COUNT', batch)
  for _, entry in ipairs(entries) do
    local entry_seq = tonumber(string.match(entry[1], '^(%d+)-'))
    -- Above the visible top (lineage mode: not acknowledged yet): not readable, skip it.
    if entry_seq <= seq then
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
        -- Too old, and so is everything before it: the page stays a contiguous run.
        return out
      end
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
  -- Go on before the batch's oldest entry.
  finish = '(' .. entries[#entries][1]
end
