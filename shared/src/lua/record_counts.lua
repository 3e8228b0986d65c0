#!lua
-- Records the queue's cumulative counters, at most once per ARGV[2] ms whatever the number of workers, in the
-- sorted set KEYS[3] (score: the time in ms); members older than ARGV[3] ms are removed (at most 64 per call).
-- KEYS[1] stream, KEYS[2] dead stream, KEYS[3] counts. ARGV[1] now (ms), ARGV[2] gap (ms), ARGV[3] keep (ms).
-- Reads only before its first write: refused whole under OOM (no allow-oom flag), as it should be.
local now = tonumber(ARGV[1])
if #redis.call('ZRANGEBYSCORE', KEYS[3], now - tonumber(ARGV[2]), '+inf', 'LIMIT', 0, 1) > 0 then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local function field(reply, name)
  for i = 1, #reply, 2 do
    if reply[i] == name then
      return reply[i + 1]
    end
  end
  return nil
end
local added = field(redis.call('XINFO', 'STREAM', KEYS[1]), 'entries-added')
local dead = 0
if redis.call('EXISTS', KEYS[2]) == 1 then
  dead = field(redis.call('XINFO', 'STREAM', KEYS[2]), 'entries-added')
end
local groups = {}
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local read = field(g, 'entries-read')
  if type(read) ~= 'number' then
    -- Redis may not know a new group's counter; a group that was never delivered anything has read nothing.
    if field(g, 'last-delivered-id') == '0-0' then
      read = 0
    else
      read = -1
    end
  end
  groups[#groups + 1] = { name = field(g, 'name'), read = read, pending = field(g, 'pending') }
end
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - tonumber(ARGV[3])), 'LIMIT', 0, 64)
for _, member in ipairs(old) do
  redis.call('ZREM', KEYS[3], member)
end
redis.call('ZADD', KEYS[3], now, cjson.encode({ t = now, added = added, dead = dead, groups = groups }))
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
