#!lua
-- Moves jobs that are due from the delayed set back onto the stream, each XADD before its ZREM, so a job is
-- never in neither place. A member that cannot become an entry (not a JSON array of an even number of
-- strings, or wider than one XADD can carry) goes to the dead stream whole, with the reason, so it never
-- blocks the members behind it. Key types are checked before the first write; while the dead stream's key holds
-- another type, such a member stays where it is (counted as stuck) and the others still move. The shebang line
-- makes Redis refuse the whole script under OOM. Safe to run from every worker at once.
-- KEYS[1] delayed set, KEYS[2] stream, KEYS[3] dead stream
-- ARGV[1] now (unix ms), ARGV[2] most jobs to move, ARGV[3] dead stream MAXLEN (0 = no cap),
-- ARGV[4] most values one XADD may carry, ARGV[5] consumer (recorded on dead entries), ARGV[6] prefix of the
-- status records (`<prefix>:{Q}:job:`), or '' to keep none
-- Each moved entry gets a `promoted_at` field (ARGV[1]; one left by an earlier promotion is replaced). With
-- status records, a job whose record says `cancelled` is dropped instead (counted as cancelled), and a moved
-- job's record becomes `state=waiting`, `msg=<entry id>`; record writes never stop a move.
-- Returns {moved, dead-lettered, stuck, cancelled}.
local function expect(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= want and kind ~= 'none' then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. kind .. ', not a ' .. want .. '; nothing was moved'
  end
end
local bad = expect(KEYS[1], 'zset') or expect(KEYS[2], 'stream')
if bad then
  return redis.error_reply(bad)
end
local dead_ok = expect(KEYS[3], 'stream') == nil
local max_values = tonumber(ARGV[4])
local function why_not(member)
  local ok, fields = pcall(cjson.decode, member)
  if not ok or type(fields) ~= 'table' then
    return 'delayed member is not JSON', nil
  end
  local n = #fields
  if n < 2 or n % 2 ~= 0 then
    return 'delayed member is not a non-empty array of field/value pairs', nil
  end
  if n + 2 > max_values then
    return 'delayed member has ' .. n .. ' values; one entry carries at most ' .. max_values, nil
  end
  for i = 1, n do
    if type(fields[i]) ~= 'string' then
      return 'delayed member value ' .. i .. ' is not a string', nil
    end
  end
  return nil, fields
end
local limit = tonumber(ARGV[2])
local records = ARGV[6] ~= ''
local moved, dead, stuck, cancelled = 0, 0, 0, 0
-- The entry's fields with `promoted_at` set to now, and its job id (nil when it has none).
local function promoted(fields)
  local out, id = {}, nil
  for i = 1, #fields, 2 do
    if fields[i] ~= 'promoted_at' then
      out[#out + 1] = fields[i]
      out[#out + 1] = fields[i + 1]
    end
    if fields[i] == 'id' then
      id = fields[i + 1]
    end
  end
  out[#out + 1] = 'promoted_at'
  out[#out + 1] = ARGV[1]
  return out, id
end
-- Members that stay (stuck) keep their place: each page starts after them, so they never hide the rest.
for _ = 1, 16 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', stuck, limit - moved - dead - cancelled)
  if #due == 0 then
    break
  end
  for _, member in ipairs(due) do
    local why, fields = why_not(member)
    if why and not dead_ok then
      stuck = stuck + 1
    elseif why then
      local letter = {'delayed.raw', member, 'dead.reason', 'undecodable', 'dead.error', why,
        'dead.consumer', ARGV[5], 'dead.at', ARGV[1]}
      -- The cap stays text: a Lua number past 2^53 would print as 1e+17, which XADD refuses.
      if ARGV[3] ~= '0' then
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', unpack(letter))
      else
        redis.call('XADD', KEYS[3], '*', unpack(letter))
      end
      dead = dead + 1
      redis.call('ZREM', KEYS[1], member)
    else
      local entry, id = promoted(fields)
      local record = records and id and (ARGV[6] .. id)
      if record and redis.pcall('HGET', record, 'state') == 'cancelled' then
        cancelled = cancelled + 1
      else
        local entry_id = redis.call('XADD', KEYS[2], '*', unpack(entry))
        moved = moved + 1
        if record then
          redis.pcall('HSET', record, 'state', 'waiting', 'msg', entry_id)
          redis.pcall('HDEL', record, 'run_at')
        end
      end
      redis.call('ZREM', KEYS[1], member)
    end
  end
  if moved + dead + cancelled >= limit then
    break
  end
end
return {moved, dead, stuck, cancelled}
