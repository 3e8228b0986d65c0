#!lua
-- Puts a failed attempt's successor in the delayed set and acknowledges the attempt, all or nothing: the type
-- of the delayed key is checked before the first write and the successor is written before the
-- acknowledgement, so the job is always pending or delayed, never gone (the shebang line makes Redis refuse the
-- whole script under OOM). Nothing is written when the entry is no longer pending for this consumer (it was
-- taken over while this consumer was paused); returns 0 then.
-- KEYS[1] stream, KEYS[2] delayed set
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id, ARGV[4] due time (unix ms),
-- ARGV[5] the next attempt's fields (JSON array of field/value strings)
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #mine == 0 then
  return 0
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'zset' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. kind .. ', not a sorted set; nothing was written')
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
