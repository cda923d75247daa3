-- Removes the given members of one topic if they are still gone: owned by no live pod (a
-- detached member has no owner) and past their expiry. KEYS as in apply.lua. ARGV[1] = the live
-- pods, newline-separated; ARGV[2] = a fresh epoch when the topic logs join/leave events, else
-- '', ARGV[3] = log size, ARGV[4] = the log's key ttl (ms), ARGV[5..7] = stage prefix, time
-- and topic (see stage.lua; KEYS[5] the outbox); ARGV[8..] = candidate sessions (found by an
-- HSCAN, which is not atomic: each is checked again here). Returns the leave events as
-- apply.lua does (with the info stored with each member).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = {}
for pod in string.gmatch(ARGV[1], '[^\n]+') do
  live[pod] = true
end
local logged = ARGV[2] ~= ''
local epoch, pseq, inc = '', 0, ''
local first_pseq = nil
local events = {''}
for i = 8, #ARGV do
  local session = ARGV[i]
  local value = redis.call('HGET', KEYS[1], session)
  local owner, expires, user, info
  if value then
    owner, expires, user, info = member_parts(value)
  end
  if owner and not live[owner] and tonumber(expires) < now then
    redis.call('HDEL', KEYS[1], session)
    local n = redis.call('HINCRBY', KEYS[2], user, -1)
    if n <= 0 then
      redis.call('HDEL', KEYS[2], user)
    end
    local at = 0
    if logged then
      if first_pseq == nil then
        epoch, pseq, inc = log_position(ARGV[2], ARGV[4])
        first_pseq = pseq
        events[1] = epoch
      end
      pseq = log_event(pseq, 'l', session, user, info, ARGV[3])
      at = pseq
    end
    events[#events + 1] = 'l'
    events[#events + 1] = session
    events[#events + 1] = user
    events[#events + 1] = info
    events[#events + 1] = (n <= 0) and 1 or 0
    events[#events + 1] = at
    local id, json = stage_event(ARGV[5], ARGV[6], ARGV[7], 'l', session, user, info, n <= 0)
    events[#events + 1] = id
    events[#events + 1] = json
  end
end
if first_pseq ~= nil then
  log_save(epoch, inc, pseq, ARGV[4])
end
return events
