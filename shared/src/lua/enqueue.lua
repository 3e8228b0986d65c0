#!lua
-- Enqueues one job and writes its status record, in one step: XADD, then the record's `state=waiting` and `msg`
-- (the entry id), so a lookup or a cancel by job id finds the entry. The record is kept as long as the job waits
-- (no time to live: PERSIST clears one left by an earlier life of the same id); workers give it one when the
-- job finishes. The XADD is the only command that can fail (a key of another type, a full Redis), and it comes
-- first: nothing is written then. The shebang line makes Redis refuse the whole script under OOM.
-- KEYS[1] stream, KEYS[2] the job's status record
-- ARGV[1..] the entry's field/value pairs
-- Returns the entry id.
if #ARGV > 4000 then
  return redis.error_reply('ERR a job has at most 2000 fields')
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV))
redis.pcall('HSET', KEYS[2], 'state', 'waiting', 'msg', id)
redis.pcall('PERSIST', KEYS[2])
return id
