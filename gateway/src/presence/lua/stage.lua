-- Shared head of the scripts that decide joins and leaves: stages each one's lifecycle event
-- (`presence.join` / `presence.leave`, the webhook's JSON) in KEYS[5], the topic's event outbox
-- (field: the event id), in the same script that decides it, so no decision is made without
-- its event kept (see gateway/src/events/outbox.rs). `stage_prefix` is '' when the gateway
-- records no events, else 24 hex digits, fresh per call: event n of the call has the id
-- prefix .. n in 8 hex digits. `stage_at` is the call's RFC 3339 time.

local stage_count = 0

-- Returns the event's id and JSON ('' and '' when not staged). `user` is the user key
-- ('u:<user id>', or 's:<session>' for an anonymous session); `info` is compact JSON or ''.
local function stage_event(stage_prefix, stage_at, topic, kind, session, user, info, edge)
  if stage_prefix == '' then
    return '', ''
  end
  stage_count = stage_count + 1
  local id = stage_prefix .. string.format('%08x', stage_count)
  local parts = {'{"id":"', id, '","type":"', kind == 'j' and 'presence.join' or 'presence.leave',
    '","at":', cjson.encode(stage_at)}
  if string.sub(user, 1, 2) == 'u:' then
    parts[#parts + 1] = ',"user":' .. cjson.encode(string.sub(user, 3))
  end
  parts[#parts + 1] = ',"session":' .. cjson.encode(session)
  parts[#parts + 1] = ',"topic":' .. cjson.encode(topic)
  parts[#parts + 1] = ',"data":{"user_edge":' .. (edge and 'true' or 'false')
  if info ~= '' then
    parts[#parts + 1] = ',"info":' .. info
  end
  parts[#parts + 1] = '}}'
  local json = table.concat(parts)
  redis.call('HSET', KEYS[5], id, json)
  return id, json
end
