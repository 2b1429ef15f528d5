-- Claim up to ARGV[1] tasks awaiting analysis for ARGV[2] ms: the analyzer reads them in the same
-- round trip, and a claim it never completes (a crash) comes back once it lapses (the TimeoutWatcher
-- rings for it). Each claim is counted in the task's `analyses` field (failing analyzers retry a few
-- times, then fail the task). The job's rung key goes first, in the same step: a result recorded
-- after this claim rings the doorbell anew, so no wake-up is lost between the two.
-- KEYS[1] analyzing, KEYS[2] rung; ARGV[1] limit, ARGV[2] claim ms, ARGV[3] task key prefix, ARGV[4] executions
-- key prefix (the task and executions keys carry the job's hash tag, like KEYS[1]).
-- Returns {{task hash fields...}, {execution records...}} per claimed task.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('DEL', KEYS[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[3] .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)  -- no task behind it (torn down): nothing to analyze
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    redis.call('HINCRBY', ARGV[3] .. id, 'analyses', 1)
    out[#out + 1] = {redis.call('HGETALL', ARGV[3] .. id), redis.call('LRANGE', ARGV[4] .. id, 0, -1)}
  end
end
return out
