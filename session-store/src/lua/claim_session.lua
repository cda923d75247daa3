-- Claim a session: KEYS[1] = the session hash (fields r = record JSON, g = generation,
-- o = owner pod), ARGV[1] = this pod, ARGV[2] = ttl in ms.
-- Returns {generation} or {generation, previous pod, previous generation}.
local before = redis.call('HGET', KEYS[1], 'g')
local owner = redis.call('HGET', KEYS[1], 'o')
local generation = redis.call('HINCRBY', KEYS[1], 'g', 1)
redis.call('HSET', KEYS[1], 'o', ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if before then
  return {generation, owner or '', tonumber(before)}
end
return {generation}
