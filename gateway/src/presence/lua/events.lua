-- The join/leave events of one topic after a client's position. KEYS as in apply.lua (only 3
-- and 4 are used). ARGV[1] = a fresh epoch, ARGV[2] = the position key's ttl (ms), ARGV[3] =
-- the client's epoch ('' for none), ARGV[4] = its pseq, ARGV[5] = most events returned.
-- Returns {epoch, top pseq, complete (1: the events after the client's pseq follow, from the
-- next one on; 0: they are gone or the epoch differs), then per event: kind, session, user
-- key, info ('' for none, and for events logged before info existed), pseq}.
local epoch, top = log_position(ARGV[1], ARGV[2])
local since = tonumber(ARGV[4])
if ARGV[3] ~= epoch or since > top then
  return {epoch, top, 0}
end
local out = {epoch, top, 1}
if since == top then
  return out
end
local entries = redis.call('XRANGE', KEYS[4], (since + 1) .. '-1', '+', 'COUNT', tonumber(ARGV[5]))
if #entries == 0 or entries[1][1] ~= (since + 1) .. '-1' then
  out[3] = 0
  return out
end
for _, entry in ipairs(entries) do
  local f = {}
  for i = 1, #entry[2], 2 do
    f[entry[2][i]] = entry[2][i + 1]
  end
  out[#out + 1] = f.k
  out[#out + 1] = f.s
  out[#out + 1] = f.u
  out[#out + 1] = f.i or ''
  out[#out + 1] = tonumber(string.match(entry[1], '^(%d+)'))
end
return out
