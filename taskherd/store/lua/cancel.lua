-- Cancel one task, persistently. Waiting (pending, retry, scheduled): straight to analyzing as
-- cancelled, to be archived. Running: flagged; the worker's next lease renewal fails, it kills the executor, and its
-- finish records the task as cancelled. Anything later (analyzing, gone) is too late to cancel.
-- KEYS[1] task, KEYS[2] pending, KEYS[3] retry, KEYS[4] analyzing, KEYS[5] scheduled; ARGV[1] id
-- Returns the state the task was in, or 'gone'.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'gone' end
if state == 'pending' or state == 'retry' or state == 'scheduled' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('HSET', KEYS[1], 'state', 'analyzing', 'outcome', 'cancelled', 'cancelled', 1,
    'error', 'cancelled', 'finished', now)
  redis.call('ZADD', KEYS[4], now, ARGV[1])
elseif state == 'running' then
  redis.call('HSET', KEYS[1], 'cancelled', 1)
end
return state
