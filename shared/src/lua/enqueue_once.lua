#!lua
-- Enqueues a job unless a job with the same idempotency key was enqueued within the key's time to live.
-- The check, the XADD and the record of the key are one atomic step, so two producers racing with the same
-- key enqueue exactly one job.
--
-- All or nothing. The shebang line makes Redis refuse the whole script while it is at maxmemory (before it
-- runs), rather than at its first write. Everything that can fail happens before the first write: the GET (a
-- key of another type), the bound on the fields, the XADD itself (a stream key of another type). The SET after
-- the XADD cannot fail: it overwrites nothing or the string the GET read.
--
-- KEYS[1] stream, KEYS[2] idempotency key, KEYS[3] (optional) the job's status record: written as the
-- `enqueue` script writes it
-- ARGV[1] time to live (ms), ARGV[2] "<job id> <trace id>", ARGV[3] the job's fingerprint (hex SHA-1 of
-- "<kind>\n<payload>"), ARGV[4..] the entry's field/value pairs
-- The key holds "<job id> <trace id> <entry id> <fingerprint>". A record of three words (written before
-- fingerprints were kept) matches any job.
-- Returns {1, "<job id> <trace id>", entry id} when enqueued; the earlier job's {0, …} when it is the same job
-- (same kind and payload), {-1, …} when the key was used for another job (nothing is written then).
local earlier = redis.call('GET', KEYS[2])
if earlier then
  local job, trace, id, fingerprint = string.match(earlier, '^(%S+) (%S+) (%S+) ?(%x*)$')
  if not job then
    return redis.error_reply('ERR unreadable idempotency record ' .. KEYS[2])
  end
  local same = fingerprint == '' or fingerprint == ARGV[3]
  return {same and 0 or -1, job .. ' ' .. trace, id}
end
-- Lua's unpack fails past ~8,000 values: refuse a wider entry before writing anything.
if #ARGV - 3 > 4000 then
  return redis.error_reply('ERR a job has at most 2000 fields')
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('SET', KEYS[2], ARGV[2] .. ' ' .. id .. ' ' .. ARGV[3], 'PX', ARGV[1])
if KEYS[3] then
  redis.pcall('HSET', KEYS[3], 'state', 'waiting', 'msg', id)
  redis.pcall('PERSIST', KEYS[3])
end
return {1, ARGV[2], id}
