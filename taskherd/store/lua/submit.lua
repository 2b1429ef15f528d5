-- Create tasks that do not exist yet; answer exists/conflict for those that do (by payload digest).
-- Task ids are global: the first job to claim an id in the task index owns it while the task is
-- live, and any other job's task of that id is a conflict.
-- KEYS[1] job meta, KEYS[2] pending zset, KEYS[3] task index, KEYS[4] set of jobs,
-- KEYS[5] specs version, KEYS[6..] task hashes (one per task, in ARGV order)
-- ARGV[1] job, ARGV[2] the specs version the batch was prepared under ('' to skip the check: it
-- answers {'stale'}, creating nothing, when a spec has changed since); then 10 per task: id, type,
-- payload, digest, max_attempts, timeout_s, parent, revives (the final state of an archived task
-- being retried, counted out of that state as it returns, and not into the total again), round (the
-- retry round; '0', a first submission, is not stored), history (JSON list of the earlier rounds' executions)
if ARGV[2] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[2] then return {'stale'} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local created, counted, out = 0, 0, {}
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  for i = 6, #KEYS do out[#out + 1] = 'cancelled' end
  return out
end
redis.call('SADD', KEYS[4], ARGV[1])
for i = 6, #KEYS do
  local a = 2 + (i - 6) * 10
  local key, id, digest = KEYS[i], ARGV[a + 1], ARGV[a + 4]
  local owner = redis.call('HGET', KEYS[3], id)
  if not owner then redis.call('HSET', KEYS[3], id, ARGV[1]) end
  local old = redis.call('HGET', key, 'digest')
  if owner and owner ~= ARGV[1] then
    out[#out + 1] = 'conflict'
  elseif old then
    out[#out + 1] = (old == digest) and 'exists' or 'conflict'
  else
    redis.call('HSET', key, 'id', id, 'job', ARGV[1], 'type', ARGV[a + 2], 'payload', ARGV[a + 3],
      'digest', digest, 'max_attempts', ARGV[a + 5], 'timeout_s', ARGV[a + 6], 'parent', ARGV[a + 7],
      'state', 'pending', 'attempts', 0, 'created', now)
    if ARGV[a + 9] ~= '0' then redis.call('HSET', key, 'round', ARGV[a + 9], 'history', ARGV[a + 10]) end
    redis.call('ZADD', KEYS[2], now, id)
    -- A revived task is already in the total: it moves from its final state back to live work. Only
    -- when the job no longer counts it (torn down since) is it counted in afresh.
    local revives = ARGV[a + 8]
    if revives ~= '' and tonumber(redis.call('HGET', KEYS[1], revives) or '0') > 0 then
      redis.call('HINCRBY', KEYS[1], revives, -1)
    else
      counted = counted + 1
    end
    created = created + 1
    out[#out + 1] = 'created'
  end
end
if created > 0 then
  redis.call('HINCRBY', KEYS[1], 'total', counted)
  redis.call('HSETNX', KEYS[1], 'created', now)
  if redis.call('HGET', KEYS[1], 'done') == '1' then
    redis.call('HSET', KEYS[1], 'done', 0)
    redis.call('HDEL', KEYS[1], 'finished', 'summarized')
  end
end
return out
