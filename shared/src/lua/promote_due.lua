-- Moves jobs that are due from the delayed set back onto the stream, each XADD and ZREM together, so a job is
-- never in both places nor in neither. Safe to run from every worker at once.
-- KEYS[1] delayed set, KEYS[2] stream
-- ARGV[1] now (unix ms), ARGV[2] most jobs to move
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local ok, fields = pcall(cjson.decode, member)
  if ok and type(fields) == 'table' and #fields >= 2 and #fields % 2 == 0 then
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  else
    -- Not written by jobstream: keep it visible on the stream so a worker dead-letters it as undecodable.
    redis.call('XADD', KEYS[2], '*', 'delayed.raw', member)
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
