#!lua
-- Removes from a consumer group the consumers that have been idle for at least ARGV[2] ms and hold no pending
-- entry (processes that are gone), at most ARGV[4] of them, never ARGV[3] (the caller itself).
--
-- Why one script: XGROUP DELCONSUMER drops the consumer's pending entries with it. Checked in one command and
-- deleted in another, a consumer could take an entry in between and the job would be lost. Here the check
-- (pending == 0, idle >= bound) and the delete happen with nothing in between, and the delete's own reply
-- (how many pending entries went with the consumer) is checked too: a script error, not a loss, if not 0.
-- A missing stream or group means nothing to remove.
--
-- KEYS[1]  the queue's stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the shortest idle time, in ms, of a consumer removed
-- ARGV[3]  a consumer never removed (the caller)
-- ARGV[4]  the most consumers removed by one run
-- Returns the names removed.
local stream, group, keep = KEYS[1], ARGV[1], ARGV[3]
local min_idle, limit = tonumber(ARGV[2]), tonumber(ARGV[4])

local consumers = redis.pcall('XINFO', 'CONSUMERS', stream, group)
if type(consumers) ~= 'table' or consumers.err then
    return {}
end
local removed = {}
for _, row in ipairs(consumers) do
    if #removed >= limit then
        break
    end
    local info = {}
    for i = 1, #row, 2 do
        info[row[i]] = row[i + 1]
    end
    if info.name ~= keep and info.pending == 0 and info.idle >= min_idle then
        local dropped = redis.call('XGROUP', 'DELCONSUMER', stream, group, info.name)
        if dropped ~= 0 then
            return redis.error_reply('removed consumer ' .. info.name .. ' held ' .. dropped .. ' entries')
        end
        removed[#removed + 1] = info.name
    end
end
return removed
