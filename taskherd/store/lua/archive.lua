-- analyzing -> gone from Redis (the MySQL row is already committed). Counts the task out of its job,
-- after any children were counted in, and marks the job done exactly once when nothing is open.
-- KEYS[1] task, KEYS[2] executions, KEYS[3] meta, KEYS[4] pending, KEYS[5] running, KEYS[6] retry,
-- KEYS[7] analyzing; ARGV[1] id, ARGV[2] final state (succeeded|failed|cancelled)
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('HGET', KEYS[1], 'state') ~= 'analyzing' then return 'skip' end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
local open = redis.call('ZCARD', KEYS[4]) + redis.call('ZCARD', KEYS[5]) + redis.call('ZCARD', KEYS[6])
  + redis.call('ZCARD', KEYS[7])
if open == 0 and redis.call('HGET', KEYS[3], 'done') ~= '1' then
  redis.call('HSET', KEYS[3], 'done', 1, 'finished', now)
  return 'done'
end
return 'ok'
