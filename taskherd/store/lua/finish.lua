-- running -> analyzing (a final outcome) or -> retry (a retryable failure with attempts left).
-- Only the live execution may finish: a superseded one is fenced and counted.
-- A final outcome returns 'ring' when the worker must ring the job's results doorbell (none is on its
-- way: the job's rung key was unset), else 'analyzing'. The key expires so a doorbell lost with nsqd
-- cannot silence the job for longer than that (the TimeoutWatcher rings for stale results as well).
-- KEYS[1] task, KEYS[2] executions list, KEYS[3] running, KEYS[4] analyzing, KEYS[5] retry, KEYS[6] meta,
-- KEYS[7] rung, KEYS[8] leased; ARGV[1] id, ARGV[2] execution id, ARGV[3] outcome (ok|failed), ARGV[4] result JSON,
-- ARGV[5] error, ARGV[6] retry delay ms (-1: final), ARGV[7] execution record JSON, ARGV[8] the task's
-- finished channel: a final outcome is published there for whoever waits for this task's result (a
-- channel nobody listens to costs a lookup). A waiter connected to this server is sent the task as
-- recorded, JSON [its hash's HGETALL, its executions], so it answers without reading it back; one
-- elsewhere (another node of a cluster) is sent 'analyzing', and reads it.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local function analyzing()
  redis.call('ZADD', KEYS[4], now, ARGV[1])
  local message = 'analyzing'
  if redis.call('PUBSUB', 'NUMSUB', ARGV[8])[2] > 0 then
    message = cjson.encode({redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)})
  end
  redis.call('PUBLISH', ARGV[8], message)
  if redis.call('SET', KEYS[7], 1, 'NX', 'PX', 10000) then return 'ring' end
  return 'analyzing'
end
local st = redis.call('HMGET', KEYS[1], 'state', 'exec', 'cancelled')
if not st[1] then return 'gone' end
if st[1] ~= 'running' or st[2] ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[6], 'fenced', 1)
  return 'fenced'
end
redis.call('RPUSH', KEYS[2], ARGV[7])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[8], ARGV[1])
local delay = tonumber(ARGV[6])
if st[3] then
  redis.call('HSET', KEYS[1], 'state', 'analyzing', 'outcome', 'cancelled', 'error', 'cancelled', 'finished', now)
  return analyzing()
end
if delay >= 0 then
  redis.call('HSET', KEYS[1], 'state', 'retry', 'error', ARGV[5], 'due', now + delay)
  redis.call('ZADD', KEYS[5], now + delay, ARGV[1])
  return 'retry'
end
redis.call('HSET', KEYS[1], 'state', 'analyzing', 'outcome', ARGV[3], 'result', ARGV[4], 'error', ARGV[5], 'finished', now)
return analyzing()
