-- Enqueues a job unless a job with the same idempotency key was enqueued within the key's time to live.
-- The check, the XADD and the record of the key are one atomic step, so two producers racing with the same
-- key enqueue exactly one job.
-- KEYS[1] stream, KEYS[2] idempotency key
-- ARGV[1] time to live (ms), ARGV[2] the record "<job id> <trace id>", ARGV[3..] the entry's field/value pairs
-- Returns {1, record, entry id} when enqueued, {0, record, entry id} of the earlier job otherwise.
local earlier = redis.call('GET', KEYS[2])
if earlier then
  local record, id = string.match(earlier, '^(.*) (%S+)$')
  return {0, record, id}
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[2], ARGV[2] .. ' ' .. id, 'PX', ARGV[1])
return {1, ARGV[2], id}
