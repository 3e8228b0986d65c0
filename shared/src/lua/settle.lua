#!lua
-- Settles one failed attempt, all or nothing: moves the entry's job to its destination — the dead stream, or
-- the delayed set for a retry — and acknowledges the entry. Everything that can fail is checked before the first
-- write and the destination is written before the acknowledgement, so the job is always still pending, dead or
-- delayed, never gone. The shebang line makes Redis refuse the whole script under OOM instead of failing at its
-- first write.
-- Nothing is written when the entry is no longer pending for this consumer: it was taken over (this consumer
-- was paused past the visibility timeout) and belongs to its new owner; returns 0 then.
-- KEYS[1] stream, KEYS[2] destination: the dead stream (move `dead`) or the delayed set (move `retry`)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id, ARGV[4] the move, `dead` or `retry`
--   dead:  ARGV[5] dead stream MAXLEN (0 = no cap), ARGV[6] most values one XADD may carry, ARGV[7] how many of
--          the trailing values are the `dead.*` pairs, ARGV[8..] the entry's field/value pairs, then the `dead.*`
--          pairs. An entry too wide for one XADD's arguments (Lua's unpack limit) is kept whole in one
--          `dead.fields` value: its field/value pairs as a JSON array of strings (bytes kept as they were).
--   retry: ARGV[5] due time (unix ms), ARGV[6] the next attempt's fields (JSON array of field/value strings)
-- Returns 1 when moved.
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #mine == 0 then
  return 0
end
local dead = ARGV[4] == 'dead'
local want = dead and 'stream' or 'zset'
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= want and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. kind .. ', not a ' .. want .. '; nothing was written')
end
if dead then
  local max_values = tonumber(ARGV[6])
  local meta = tonumber(ARGV[7])
  local last_field = #ARGV - meta
  local values = {}
  if last_field - 7 + meta > max_values then
    local packed = {}
    for i = 8, last_field do
      packed[#packed + 1] = ARGV[i]
    end
    values[1] = 'dead.fields'
    values[2] = cjson.encode(packed)
  else
    for i = 8, last_field do
      values[#values + 1] = ARGV[i]
    end
  end
  for i = last_field + 1, #ARGV do
    values[#values + 1] = ARGV[i]
  end
  -- The cap stays text: a Lua number past 2^53 would print as 1e+17, which XADD refuses.
  if ARGV[5] ~= '0' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(values))
  else
    redis.call('XADD', KEYS[2], '*', unpack(values))
  end
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
