-- Claim a session: KEYS[1] = the session hash (fields r = record JSON, g = generation,
-- o = owner pod), ARGV[1] = this pod, ARGV[2] = ttl in ms.
-- Returns {generation} or {generation, previous pod, previous generation}.
--
-- Generations are microseconds of the server clock (or one more than the last claim, if that
-- is later): they only grow, even when the hash was lost or rolled back (a Redis restarted from
-- a snapshot would otherwise hand out a generation a live connection already holds).
local before = redis.call('HGET', KEYS[1], 'g')
local owner = redis.call('HGET', KEYS[1], 'o')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local generation = math.max(tonumber(before or '0') + 1, now)
redis.call('HSET', KEYS[1], 'g', string.format('%d', generation), 'o', ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if before and owner then
  return {generation, owner, tonumber(before)}
end
return {generation}
