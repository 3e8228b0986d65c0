-- Moves one dead entry back onto the stream as a fresh job (fields given by the caller: attempt 1, new trace
-- context) and deletes it from the dead stream, atomically: the job is in exactly one of the two places.
-- KEYS[1] dead stream, KEYS[2] stream
-- ARGV[1] dead entry id, ARGV[2..] the new entry's field/value pairs
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then
  return false
end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
