#!lua
-- Moves one entry to the dead stream and acknowledges it, all or nothing. Everything that can fail is checked
-- before the first write, and the dead entry is written before the acknowledgement, so the job is always either
-- still pending or dead, never gone. The shebang line makes Redis refuse the whole script under OOM instead of
-- failing at its first write.
-- Nothing is written when the entry is no longer pending for this consumer: it was taken over (this consumer
-- was paused past the visibility timeout) and belongs to its new owner; returns 0 then.
-- An entry too wide to pass as one XADD's arguments (Lua's unpack limit) is kept whole in one `dead.fields`
-- value: its field/value pairs as a JSON array of strings (bytes kept as they were).
-- KEYS[1] stream, KEYS[2] dead stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id, ARGV[4] dead stream MAXLEN (0 = no cap),
-- ARGV[5] most values one XADD may carry, ARGV[6] how many of the trailing values are the `dead.*` pairs,
-- ARGV[7..] the entry's field/value pairs, then the `dead.*` pairs
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #mine == 0 then
  return 0
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. kind .. ', not a stream; nothing was written')
end
local max_values = tonumber(ARGV[5])
local meta = tonumber(ARGV[6])
local last_field = #ARGV - meta
local values = {}
if last_field - 6 + meta > max_values then
  local packed = {}
  for i = 7, last_field do
    packed[#packed + 1] = ARGV[i]
  end
  values[1] = 'dead.fields'
  values[2] = cjson.encode(packed)
else
  for i = 7, last_field do
    values[#values + 1] = ARGV[i]
  end
end
for i = last_field + 1, #ARGV do
  values[#values + 1] = ARGV[i]
end
-- The cap stays text: a Lua number past 2^53 would print as 1e+17, which XADD refuses.
if ARGV[4] ~= '0' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(values))
else
  redis.call('XADD', KEYS[2], '*', unpack(values))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
