-- Renews this consumer's claim on the entries it is still running (resets their idle time), so the reclaimer
-- of another worker does not take a slow job from a live one. Only entries still pending for this consumer
-- are touched: an entry already claimed by another is left to it, and returned so the caller knows.
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #mine == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  else
    table.insert(lost, id)
  end
end
return lost
