#!lua
-- Settles one failed attempt, all or nothing: moves the entry's job to its destination — the dead stream, or
-- the delayed set for a retry — and acknowledges the entry. Everything that can fail is checked before the first
-- write and the destination is written before the acknowledgement, so the job is always still pending, dead or
-- delayed, never gone. The shebang line makes Redis refuse the whole script under OOM instead of failing at its
-- first write.
-- Nothing is written when the entry is no longer pending for this consumer: it was taken over (this consumer
-- was paused past the visibility timeout) and belongs to its new owner; returns 0 then.
-- KEYS[1] stream, KEYS[2] destination: the dead stream (move `dead`) or the delayed set (move `retry`),
-- KEYS[3] (optional) the job's status record
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id, ARGV[4] the move, `dead` or `retry`,
-- ARGV[5] the record's new field/value pairs as a JSON array of strings ('' for none), ARGV[6] the record's time
-- to live in ms ('0' to keep it without one)
--   dead:  ARGV[7] dead stream MAXLEN (0 = no cap), ARGV[8] most values one XADD may carry, ARGV[9] how many of
--          the trailing values are the `dead.*` pairs, ARGV[10..] the entry's field/value pairs, then the `dead.*`
--          pairs. An entry too wide for one XADD's arguments (Lua's unpack limit) is kept whole in one
--          `dead.fields` value: its field/value pairs as a JSON array of strings (bytes kept as they were).
--          The record also gets `dead_id`, the dead entry's id.
--   retry: ARGV[7] due time (unix ms), ARGV[8] the next attempt's fields (JSON array of field/value strings)
-- The record is written last and with pcall: a record that cannot be written never stops the move.
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
local dead_id
if dead then
  local max_values = tonumber(ARGV[8])
  local meta = tonumber(ARGV[9])
  local last_field = #ARGV - meta
  local values = {}
  if last_field - 9 + meta > max_values then
    local packed = {}
    for i = 10, last_field do
      packed[#packed + 1] = ARGV[i]
    end
    values[1] = 'dead.fields'
    values[2] = cjson.encode(packed)
  else
    for i = 10, last_field do
      values[#values + 1] = ARGV[i]
    end
  end
  for i = last_field + 1, #ARGV do
    values[#values + 1] = ARGV[i]
  end
  -- The cap stays text: a Lua number past 2^53 would print as 1e+17, which XADD refuses.
  if ARGV[7] ~= '0' then
    dead_id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', unpack(values))
  else
    dead_id = redis.call('XADD', KEYS[2], '*', unpack(values))
  end
else
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[8])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if KEYS[3] and ARGV[5] ~= '' then
  local ok, update = pcall(cjson.decode, ARGV[5])
  if ok and type(update) == 'table' and #update > 0 then
    if dead_id then
      update[#update + 1] = 'dead_id'
      update[#update + 1] = dead_id
    end
    redis.pcall('HSET', KEYS[3], unpack(update))
    if ARGV[6] ~= '0' then
      redis.pcall('PEXPIRE', KEYS[3], ARGV[6])
    else
      redis.pcall('PERSIST', KEYS[3])
    end
  end
end
return 1
