#!lua flags=allow-oom
-- Takes over entries idle past the visibility timeout (XAUTOCLAIM) and reads, in the same atomic step, their
-- owner, idle time and delivery count before the claim (XPENDING), so those describe exactly the entries
-- claimed. `allow-oom`: neither command grows memory, and a consumer must keep draining while Redis is at
-- maxmemory (a MULTI is refused whole under OOM).
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle (ms), ARGV[4] cursor, ARGV[5] count
-- Returns {XPENDING rows, XAUTOCLAIM reply}.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], ARGV[4], '+', ARGV[5])
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
return {pending, claimed}
