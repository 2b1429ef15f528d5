-- Register a fan-in join (Celery's chord): the analyzer of a parent returned children and a join; the
-- children were submitted just before (each created one carries `join` = the parent's id and is
-- counted open in the join hash by submit.lua). In one step: create the join task held (scheduled with
-- no due time: never promoted, but open work of the job, so the job cannot be done before it is
-- final), and register the join, counting the parent in until it retires (retire.lua), so the join
-- fires exactly once, after the parent and every member are final. Run again (the analysis repeated
-- after a crash or a failure), it answers 'exists' and changes nothing.
-- KEYS[1] meta, KEYS[2] scheduled zset, KEYS[3] the job's set of joins, KEYS[4] the parent's task hash,
-- KEYS[5] the join hash, KEYS[6] the join task's hash (the caller claimed the join task's id for the job
-- in the task index first, and counts it in the open tasks of all jobs once registered)
-- ARGV[1] job, ARGV[2] parent id, ARGV[3] join task id, ARGV[4] type, ARGV[5] payload (a JSON object),
-- ARGV[6] digest, ARGV[7] max_attempts, ARGV[8] timeout_s, ARGV[9] task key prefix, ARGV[10] join key
-- prefix, ARGV[11] the listed children's ids (JSON list), then (child id, outcome JSON or '') pairs: the
-- outcome to give a listed child that is no member (archived before, never created).
-- A listed child live outside any join (submitted earlier by another task) is adopted: counted in,
-- its outcome kept when it retires (its children submitted before are not waited for).
-- Returns 'registered', 'exists', 'gone' (the parent is not awaiting analysis: retired by another
-- manager meanwhile), 'cancelled' (the job refuses new tasks) or 'conflict' (the join task's id is taken).
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local job, parent, id = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[4], 'state') ~= 'analyzing' then return 'gone' end
if redis.call('HGET', KEYS[5], 'registered') == '1' then return 'exists' end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 'cancelled' end
if redis.call('EXISTS', KEYS[6]) == 1 then return 'conflict' end

redis.call('HSET', KEYS[6], 'id', id, 'job', job, 'type', ARGV[4], 'payload', ARGV[5], 'digest', ARGV[6],
  'max_attempts', ARGV[7], 'timeout_s', ARGV[8], 'parent', parent, 'state', 'scheduled', 'attempts', 0,
  'created', now, 'held', 1)
redis.call('ZADD', KEYS[2], '+inf', id)
redis.call('HINCRBY', KEYS[1], 'total', 1)
local outer = redis.call('HGET', KEYS[4], 'join')
if outer then  -- the parent is itself in a join: so is its join task, which that join then waits for
  redis.call('HSET', KEYS[6], 'join', outer)
  redis.call('HINCRBY', ARGV[10] .. outer, 'open', 1)
  redis.call('SADD', KEYS[3], outer)
end

for i = 12, #ARGV, 2 do
  local cid, outcome = ARGV[i], ARGV[i + 1]
  redis.call('HSET', KEYS[5], 'l:' .. cid, 1)
  if redis.call('HEXISTS', KEYS[5], 'r:' .. cid) == 0 then  -- not a member retired already
    local child = ARGV[9] .. cid
    local in_join = redis.call('HGET', child, 'join')
    if in_join == parent then
      -- a member, counted in when it was created
    elseif not in_join and redis.call('EXISTS', child) == 1 then
      redis.call('HSET', child, 'join', parent)
      redis.call('HINCRBY', KEYS[5], 'open', 1)
    else
      redis.call('HSET', KEYS[5], 'r:' .. cid, outcome)
    end
  end
end
redis.call('HSET', KEYS[5], 'registered', 1, 'task', id, 'type', ARGV[4], 'payload', ARGV[5], 'listed', ARGV[11])
redis.call('HINCRBY', KEYS[5], 'open', 1)
redis.call('SADD', KEYS[3], parent)
return 'registered'
