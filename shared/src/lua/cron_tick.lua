#!lua
-- Enqueues the job of one tick of a periodic schedule, at most once per tick however many consumers try: the
-- schedule's last enqueued tick and the XADD are written together, and only when this tick is newer than the
-- last one, so of all the consumers that race for a tick exactly one writes it, and one that dies before or
-- after this script leaves either nothing (the next consumer's run enqueues the tick) or the whole tick. The
-- schedule must still be the one the caller read (same spec text): a schedule removed, paused or replaced in
-- between enqueues nothing. Key types are checked before the first write; the shebang line makes Redis refuse
-- the whole script under OOM.
-- KEYS[1] schedules hash (name -> spec JSON), KEYS[2] last ticks hash (name -> unix ms), KEYS[3] stream,
-- KEYS[4] (optional) the tick job's status record, written as the `enqueue` script writes it
-- ARGV[1] schedule name, ARGV[2] tick (unix ms, decimal), ARGV[3] the spec JSON the caller read,
-- ARGV[4..] the entry's field/value pairs (a fixed, small number the library builds)
-- Returns {1, entry id} enqueued; {0, last tick} this tick or a later one was enqueued already;
-- {-1, ''} the schedule is gone or was changed since it was read.
local function expect(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= want and kind ~= 'none' then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. kind .. ', not a ' .. want .. '; nothing was enqueued'
  end
end
local bad = expect(KEYS[1], 'hash') or expect(KEYS[2], 'hash') or expect(KEYS[3], 'stream')
if bad then
  return redis.error_reply(bad)
end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then
  return {-1, ''}
end
local last = redis.call('HGET', KEYS[2], ARGV[1])
if last and tonumber(last) >= tonumber(ARGV[2]) then
  return {0, last}
end
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local id = redis.call('XADD', KEYS[3], '*', unpack(fields))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if KEYS[4] then
  redis.pcall('HSET', KEYS[4], 'state', 'waiting', 'msg', id)
end
return {1, id}
