-- Acknowledges a failed attempt and schedules the next one in the delayed set, as one atomic step: a crash
-- between the two would either lose the job (ack without schedule) or run it twice (schedule, then
-- redelivery of the unacknowledged entry). Nothing is written when the entry is no longer pending (another
-- consumer reclaimed and settled it).
-- KEYS[1] stream, KEYS[2] delayed set
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] due time (unix ms), ARGV[4] the next attempt's fields (JSON array)
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
