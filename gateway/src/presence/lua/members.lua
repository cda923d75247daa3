-- The members of one topic, unless there are more than ARGV[1]: then {-1, count}. KEYS as in
-- apply.lua. Returns {now ms, session1, value1, ...}.
local n = redis.call('HLEN', KEYS[1])
if n > tonumber(ARGV[1]) then
  return {-1, n}
end
local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all do
  out[#out + 1] = all[i]
end
return out
