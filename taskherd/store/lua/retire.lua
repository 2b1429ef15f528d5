-- analyzing -> gone from Redis, for a batch of one job's tasks whose MySQL rows are already committed.
-- Counts each out of its job (after any children were counted in) and marks the job done exactly once,
-- when nothing is open.
-- KEYS[1] meta, KEYS[2] pending, KEYS[3] running, KEYS[4] retry, KEYS[5] analyzing, KEYS[6] scheduled,
-- KEYS[7] open tasks of all jobs (a counter: what is retired leaves it; never below 0, so a counter that started after
-- tasks were live under-counts until they drain, and never blocks submits for ever)
-- ARGV[1] task key prefix, ARGV[2] executions key prefix, ARGV[3] tombstone key prefix, then (id,
-- final state) pairs; the task and executions keys carry the job's hash tag, like KEYS.
-- Returns 'ok' or 'skip' (not awaiting analysis: a duplicate) per task, then 'done' or 'open'.
-- A retired task leaves a tombstone (job and digest, for TOMBSTONE_MS) that submit.lua reads: a
-- resubmit whose check of MySQL came just before the archive commit, and reaches Redis just after
-- this removal, is then answered as the archive would have (exists or conflict), not run again.
local TOMBSTONE_MS = 10000
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out, retired = {}, 0
for i = 4, #ARGV, 2 do
  local id, task = ARGV[i], ARGV[1] .. ARGV[i]
  if redis.call('HGET', task, 'state') ~= 'analyzing' then
    out[#out + 1] = 'skip'
  else
    local digest = redis.call('HGET', task, 'digest')
    redis.call('SET', ARGV[3] .. id, KEYS[1] .. ' ' .. digest, 'PX', TOMBSTONE_MS)
    redis.call('DEL', task, ARGV[2] .. id)
    redis.call('ZREM', KEYS[5], id)
    redis.call('HINCRBY', KEYS[1], ARGV[i + 1], 1)
    out[#out + 1] = 'ok'
    retired = retired + 1
  end
end
if retired > 0 then
  local left = tonumber(redis.call('GET', KEYS[7]) or '0') - retired
  redis.call('SET', KEYS[7], math.max(0, left))
end
local open = 0
for i = 2, 6 do open = open + redis.call('ZCARD', KEYS[i]) end
if open == 0 and redis.call('HGET', KEYS[1], 'done') ~= '1' then
  redis.call('HSET', KEYS[1], 'done', 1, 'finished', now)
  out[#out + 1] = 'done'
else
  out[#out + 1] = 'open'
end
return out
