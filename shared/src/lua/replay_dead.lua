#!lua
-- Moves one dead entry back onto the stream as a fresh job (fields given by the caller: attempt 1, new trace
-- context) and deletes it from the dead stream, all or nothing: the checks come first, the new entry is written
-- before the dead one is deleted, and the shebang line makes Redis refuse the whole script under OOM.
-- KEYS[1] dead stream, KEYS[2] stream, KEYS[3] (optional) the job's status record: back to `waiting` on the new
-- entry, its outcome fields cleared and its time to live removed
-- ARGV[1] dead entry id, ARGV[2] most values one XADD may carry, ARGV[3..] the new entry's field/value pairs
-- Returns the new entry's id, or false when the dead entry does not exist.
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
-- Exactly that entry: XRANGE reads a bare `5` as `5-0`…`5-max`, XDEL as `5-0`.
if #found == 0 or found[1][1] ~= ARGV[1] then
  return false
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. kind .. ', not a stream; nothing was written')
end
if #ARGV - 2 > tonumber(ARGV[2]) then
  return redis.error_reply('the entry has ' .. (#ARGV - 2) .. ' values; one entry carries at most ' .. ARGV[2])
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('XDEL', KEYS[1], ARGV[1])
if KEYS[3] then
  redis.pcall('HDEL', KEYS[3], 'reason', 'error', 'dead_id', 'finished_at', 'result', 'progress', 'cancel_requested_at')
  redis.pcall('HSET', KEYS[3], 'state', 'waiting', 'msg', id)
  redis.pcall('PERSIST', KEYS[3])
end
return id
