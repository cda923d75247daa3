-- Save a session: KEYS[1] = the session hash, ARGV[1] = the saver's generation, ARGV[2] = the
-- record JSON, ARGV[3] = ttl in ms, ARGV[4] = the saver's pod. Returns 1, or 0 (nothing
-- written) when a later claim holds the session. An older stored generation (the hash rolled
-- back with the store) does not refuse the save: the saver is the newest holder it knows of.
local current = redis.call('HGET', KEYS[1], 'g')
if current and tonumber(current) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'r', ARGV[2], 'g', ARGV[1], 'o', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
