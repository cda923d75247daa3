-- Removes the members of one topic that are gone: owned by no live pod (ARGV[2..] are the live
-- pods; a detached member has no owner) and past their expiry. KEYS as in apply.lua. ARGV[1] is
-- unused (kept for the same layout). Returns the leave events as apply.lua does.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = {}
for i = 2, #ARGV do
  live[ARGV[i]] = true
end
local events = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local session, value = all[i], all[i + 1]
  local owner, expires, user = string.match(value, '^([^|]*)|(%d+)|(.*)$')
  if owner and not live[owner] and tonumber(expires) < now then
    redis.call('HDEL', KEYS[1], session)
    local n = redis.call('HINCRBY', KEYS[2], user, -1)
    if n <= 0 then
      redis.call('HDEL', KEYS[2], user)
    end
    events[#events + 1] = 'l'
    events[#events + 1] = session
    events[#events + 1] = user
    events[#events + 1] = (n <= 0) and 1 or 0
  end
end
return events
