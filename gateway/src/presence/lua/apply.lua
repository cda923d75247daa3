-- One pod's presence changes of one topic, atomically. KEYS[1] = members hash (field: session,
-- value: "<pod>|<expires ms>|<tail>", the tail being the user key, or "i<n>:<info><user key>"
-- with the session's info of n bytes; see value.rs), KEYS[2] = users hash (field: user key, value: its
-- sessions present), KEYS[3] and KEYS[4] = the join/leave position and log (see log.lua),
-- KEYS[5] = the topic's event outbox (see stage.lua).
-- ARGV[1] = pod, ARGV[2] = member ttl (ms), ARGV[3] = key ttl (ms), ARGV[4] = a fresh epoch
-- when the topic logs join/leave events, else '', ARGV[5] = log size, ARGV[6] = stage prefix,
-- ARGV[7] = stage time, ARGV[8] = the topic, then quadruples: op ('a' attach, 'd' detach, 'l'
-- leave), session, user key (the user id prefixed with 'u:', or 's:<session>' for an anonymous
-- session), info (compact JSON, '' for none).
-- Returns {epoch or '', then per event: kind ('j' or 'l'), session, user key, info, edge (1:
-- the user's first join or last leave), pseq (0 when not logged), staged event id and JSON
-- ('' when not staged)}, flattened. A leave carries the info stored with the member (the one
-- its join had).
--
-- A session already present is never joined again: a resume on another pod only moves its
-- owner. A detach (its connection ended) only applies while this pod owns the member, so a
-- late detach from the pod a session left never touches the pod that holds it now.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[2])
local pod = ARGV[1]
local logged = ARGV[4] ~= ''
local epoch, pseq, inc = '', 0, ''
local first_pseq = nil
local events = {''}
local function tail(user, info)
  if info == '' then
    return user
  end
  return 'i' .. #info .. ':' .. info .. user
end
local function emit(kind, session, user, info, edge)
  local n = 0
  if logged then
    -- Read at the first event only: a batch of refreshes and detaches changes no position.
    if first_pseq == nil then
      epoch, pseq, inc = log_position(ARGV[4], ARGV[3])
      first_pseq = pseq
      events[1] = epoch
    end
    pseq = log_event(pseq, kind, session, user, info, ARGV[5])
    n = pseq
  end
  events[#events + 1] = kind
  events[#events + 1] = session
  events[#events + 1] = user
  events[#events + 1] = info
  events[#events + 1] = edge and 1 or 0
  events[#events + 1] = n
  local id, json = stage_event(ARGV[6], ARGV[7], ARGV[8], kind, session, user, info, edge)
  events[#events + 1] = id
  events[#events + 1] = json
end
for i = 9, #ARGV, 4 do
  local op, session, user, info = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local cur = redis.call('HGET', KEYS[1], session)
  if op == 'a' then
    redis.call('HSET', KEYS[1], session, pod .. '|' .. until_ms .. '|' .. tail(user, info))
    if not cur then
      local n = redis.call('HINCRBY', KEYS[2], user, 1)
      emit('j', session, user, info, n == 1)
    end
  elseif op == 'd' then
    if cur and string.sub(cur, 1, #pod + 1) == pod .. '|' then
      redis.call('HSET', KEYS[1], session, '|' .. until_ms .. '|' .. tail(user, info))
    end
  elseif op == 'l' then
    if cur then
      redis.call('HDEL', KEYS[1], session)
      local n = redis.call('HINCRBY', KEYS[2], user, -1)
      if n <= 0 then
        redis.call('HDEL', KEYS[2], user)
      end
      local stored = member_info(cur)
      emit('l', session, user, stored, n <= 0)
    end
  end
end
if redis.call('HLEN', KEYS[1]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
if first_pseq ~= nil then
  log_save(epoch, inc, pseq, ARGV[3])
end
return events
