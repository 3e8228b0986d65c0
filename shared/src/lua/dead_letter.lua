-- Moves one entry to the dead stream and acknowledges it, as one atomic step: a crash between the two
-- would either lose the job (ack without dead letter) or duplicate it (dead letter, then redelivery).
-- The XACK comes first: when another consumer already settled the entry (it was reclaimed from us),
-- nothing is written.
-- KEYS[1] stream, KEYS[2] dead stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] dead stream MAXLEN (0 = no cap), ARGV[4..] field/value pairs
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 0 then
  return 0
end
local maxlen = tonumber(ARGV[3])
if maxlen > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 4))
else
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
end
return 1
