#!lua flags=allow-oom
-- Creates the consumer group at the start of the stream (and the stream) unless it exists. `allow-oom`: a
-- group is a few bytes, and without it consumers could not start draining a queue while Redis is at maxmemory
-- (XGROUP CREATE alone is refused under OOM).
-- KEYS[1] stream
-- ARGV[1] group
-- Returns 1 when created, 0 when it existed.
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(created) == 'table' and created['err'] then
  if string.find(created['err'], 'BUSYGROUP', 1, true) then
    return 0
  end
  return created
end
return 1
