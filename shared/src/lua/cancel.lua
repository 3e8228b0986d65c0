#!lua
-- Cancels one job by its status record, atomically with what the job is doing:
--   delayed (a scheduled job or a retry): the record becomes `cancelled`; the promoter drops the member when it
--     comes due, so the job never runs;
--   waiting, not yet delivered to any consumer of the group: the entry is deleted (XDEL) and the record becomes
--     `cancelled`, so the job never runs;
--   waiting but delivered (pending: running, or taken by a consumer that died): the record gets
--     `cancel_requested_at`, and the caller adds the id to the queue's cancel set, which every worker polls;
--   already cancelled, done, dead or expired: nothing changes.
-- No write fails but the first, so nothing is half done. The shebang line makes Redis refuse it under OOM.
-- KEYS[1] the job's per-job hash, KEYS[2] the stream
-- ARGV[1] group, ARGV[2] now (unix ms), ARGV[3] time to live of a finished record (ms, '0' for none),
-- ARGV[4] the job's entry id when the caller found it on the stream ('' to take the hash's `msg`)
-- Returns {outcome, detail}: {'cancelled', 'delayed'|'waiting'}, {'signalled', consumer},
-- {'already', state} (cancelled, done, dead, expired), {'unknown', ''} (no record),
-- {'gone', ''} (the record names an entry the stream no longer holds).
local state = redis.call('HGET', KEYS[1], 'state') or (ARGV[4] ~= '' and 'waiting')
if not state then
  return {'unknown', ''}
end
-- A delayed job's record must outlive its due time: the promoter drops the member only while the record says
-- cancelled. So it expires the retention after the later of now and the due time.
local function finish(from, due)
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[2], 'cancel_requested_at', ARGV[2])
  if ARGV[3] ~= '0' then
    local ttl = tonumber(ARGV[3])
    local wait = (tonumber(due or '0') or 0) - tonumber(ARGV[2])
    if wait > 0 then
      ttl = ttl + wait
    end
    redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
  end
  return {'cancelled', from}
end
if state == 'delayed' then
  return finish('delayed', redis.call('HGET', KEYS[1], 'run_at'))
end
if state ~= 'waiting' then
  return {'already', state}
end
local msg = ARGV[4] ~= '' and ARGV[4] or redis.call('HGET', KEYS[1], 'msg')
if not msg then
  return {'gone', ''}
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'stream' then
  return {'gone', ''}
end
local pending = redis.pcall('XPENDING', KEYS[2], ARGV[1], msg, msg, 1)
-- No group yet (NOGROUP): nothing was delivered.
if type(pending) == 'table' and pending.err == nil and #pending > 0 then
  redis.call('HSET', KEYS[1], 'cancel_requested_at', ARGV[2])
  return {'signalled', pending[1][2]}
end
local found = redis.call('XRANGE', KEYS[2], msg, msg)
if #found == 0 then
  return {'gone', ''}
end
-- Delivered to the group already (its id is not after the group's last delivered one) and not pending: it was
-- acknowledged, and the record's update is on its way.
local last = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
  local info = {}
  for i = 1, #group, 2 do
    info[group[i]] = group[i + 1]
  end
  if info['name'] == ARGV[1] then
    last = info['last-delivered-id']
  end
end
local function after(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  if tonumber(a_ms) ~= tonumber(b_ms) then
    return tonumber(a_ms) > tonumber(b_ms)
  end
  return tonumber(a_seq) > tonumber(b_seq)
end
if last and not after(msg, last) then
  return {'already', 'done'}
end
redis.call('XDEL', KEYS[2], msg)
-- Keep what a lookup shows, now that the entry is gone.
local fields = found[1][2]
for i = 1, #fields, 2 do
  local name = fields[i]
  if name == 'kind' or name == 'enqueued_at' or name == 'traceparent' then
    redis.call('HSET', KEYS[1], name, fields[i + 1])
  end
end
return finish('waiting')
