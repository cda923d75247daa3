-- The members of one topic, unless there are more than ARGV[1]: then {-1, count}. KEYS as in
-- apply.lua. ARGV[2] = a fresh epoch when the topic logs join/leave events (its position is
-- read in the same step, so the list is exactly the state after that pseq), else ''; ARGV[3] =
-- the position key's ttl (ms). Returns {now ms, epoch or '', pseq, session1, value1, ...}.
local n = redis.call('HLEN', KEYS[1])
if n > tonumber(ARGV[1]) then
  return {-1, n}
end
local t = redis.call('TIME')
local epoch, pseq = '', 0
if ARGV[2] ~= '' then
  epoch, pseq = log_position(ARGV[2], ARGV[3])
end
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), epoch, pseq}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all do
  out[#out + 1] = all[i]
end
return out
