-- Create tasks that do not exist yet; answer exists/conflict for those that do (by payload digest).
-- Task ids are global. On a Redis Cluster the caller claimed each id in the task index first
-- (`keys.index`, a key of its own) and passes here only those its job holds: this script touches the
-- job's slot alone. On one Redis ('whole'), the script does the claims, the bound on all jobs, the
-- count and the job sets itself: the whole submit is one atomic step (`StateStore.submit`).
-- KEYS[1] job meta, KEYS[2] pending zset, KEYS[3..6] running, retry, analyzing, scheduled zsets,
-- KEYS[7..6+n] task hashes (one per task, in ARGV order); whole: then the n ids' index keys, the
-- count of open tasks of all jobs, the open jobs, the done jobs, the executor specs' version.
-- ARGV[1] job, ARGV[2] the bound on open tasks of the job (0: none; a batch whose new tasks would pass
-- it answers {'full', open, new tasks asked}, creating nothing), ARGV[3] the tombstone key prefix
-- (retire.lua's, under the job's tag), ARGV[4] '1' whole, '' not; whole: ARGV[5] the bound on open
-- tasks of all jobs ('0': none; {'full-all', open, asked} when passed), ARGV[6] the specs version
-- the caller read ('' none; {'stale'} when it changed since); then 12 per task: id, type,
-- payload, digest, max_attempts, timeout_s, parent, revives (the final state of an archived task
-- being retried, counted out of that state as it returns, and not into the total again), round (the
-- retry round; '0', a first submission, is not stored), history (JSON list of the earlier rounds' executions),
-- due (when it may first run: '' now, '+MS' MS from now on Redis's clock, or Unix ms; a due time still
-- ahead creates it scheduled, in the scheduled zset scored by that time, answering 'scheduled' for
-- 'created': nothing is published for it until the TimeoutWatcher promotes it; one already past
-- creates it pending; either way the task keeps it as `run_at`), priority (0-9, kept in the hash).
-- Answers per task: created | scheduled | exists | conflict | cancelled, or retired-exists |
-- retired-conflict (the id's task was archived a moment ago: its tombstone answered).
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local FIRST, N = 7, 12
local whole = ARGV[4] == '1'
local n = whole and (#KEYS - FIRST + 1 - 4) / 2 or (#KEYS - FIRST + 1)
local LAST = FIRST + n - 1
-- After the tasks' ARGV: when the caller asked MySQL which ids were archived (Unix ms, '' if it did
-- not). That check must be younger than the tombstones (10 s), with 5 s to spare for clocks: else
-- {'recheck'}, creating nothing.
local after = 6 + n * N
local checked, tombstones = tonumber(ARGV[after + 1] or ''), ARGV[3]
-- Then, when any task of the batch belongs to a fan-in join: the join hashes' key prefix, the job's set
-- of joins, and each task's join id ('' for none) in order; a task created in a join is counted open
-- in it (retire.lua counts it out), so the join cannot fire while it is live.
local join_prefix, join_set = ARGV[after + 2], ARGV[after + 3]
-- whole: the ids another job holds (answered 'conflict'), and how many no job holds yet
local theirs, fresh, open_all, OPEN_ALL = {}, 0, 0, LAST + n + 1
if whole then
  if ARGV[6] ~= '' and redis.call('GET', KEYS[OPEN_ALL + 3]) ~= ARGV[6] then return {'stale'} end
  for i = FIRST, LAST do
    local owner = redis.call('GET', KEYS[i + n])
    if not owner then fresh = fresh + 1 elseif owner ~= ARGV[1] then theirs[i] = true end
  end
  open_all = tonumber(redis.call('GET', KEYS[OPEN_ALL]) or '0')
  local bound = tonumber(ARGV[5])
  if bound > 0 and open_all + fresh > bound then return {'full-all', open_all, fresh} end
end
if checked and now - checked > 5000 then return {'recheck'} end
local created, counted, out = 0, 0, {}
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  for i = FIRST, LAST do out[#out + 1] = 'cancelled' end
  return out
end
local per_job = tonumber(ARGV[2])
if per_job > 0 then
  local asked = 0
  for i = FIRST, LAST do if not theirs[i] then asked = asked + 1 end end
  local open = redis.call('ZCARD', KEYS[2])
  for k = 3, 6 do open = open + redis.call('ZCARD', KEYS[k]) end
  if open + asked > per_job then
    asked = 0  -- count only what would be created: a resubmission fits where it was
    for i = FIRST, LAST do
      if not theirs[i] and redis.call('EXISTS', KEYS[i]) == 0 then asked = asked + 1 end
    end
    if open + asked > per_job then return {'full', open, asked} end
  end
end
for i = FIRST, LAST do
  local a = 6 + (i - FIRST) * N
  local key, id, digest = KEYS[i], ARGV[a + 1], ARGV[a + 4]
  local old = (not theirs[i]) and redis.call('HGET', key, 'digest')
  local live = old
  if old and whole then redis.call('SET', KEYS[i + n], ARGV[1]) end  -- a live task's id is its job's
  if not old and not theirs[i] and ARGV[a + 8] == '' then  -- retired a moment ago? (a revival is no resubmit)
    old = redis.call('GET', tombstones .. id)
  end
  if theirs[i] then
    out[#out + 1] = 'conflict'
  elseif old then
    -- 'retired-': answered from a tombstone, its claim left to lapse (a live task's is confirmed)
    out[#out + 1] = (live and '' or 'retired-') .. ((old == digest) and 'exists' or 'conflict')
  else
    redis.call('HSET', key, 'id', id, 'job', ARGV[1], 'type', ARGV[a + 2], 'payload', ARGV[a + 3],
      'digest', digest, 'max_attempts', ARGV[a + 5], 'timeout_s', ARGV[a + 6], 'parent', ARGV[a + 7],
      'state', 'pending', 'attempts', 0, 'created', now, 'priority', ARGV[a + 12])
    if ARGV[a + 9] ~= '0' then redis.call('HSET', key, 'round', ARGV[a + 9], 'history', ARGV[a + 10]) end
    local join = join_prefix and ARGV[after + 3 + i - FIRST + 1] or ''
    if join ~= '' then
      redis.call('HSET', key, 'join', join)
      redis.call('HINCRBY', join_prefix .. join, 'open', 1)
      redis.call('SADD', join_set, join)
    end
    local due = ARGV[a + 11]
    if due ~= '' then
      due = (string.sub(due, 1, 1) == '+') and now + tonumber(string.sub(due, 2)) or tonumber(due)
      redis.call('HSET', key, 'run_at', string.format('%d', due))
    else
      due = nil
    end
    if due and due > now then
      redis.call('HSET', key, 'state', 'scheduled')
      redis.call('ZADD', KEYS[6], due, id)
    else
      redis.call('ZADD', KEYS[2], now, id)
    end
    -- A revived task is already in the total: it moves from its final state back to live work. Only
    -- when the job no longer counts it (torn down since) is it counted in afresh.
    local revives = ARGV[a + 8]
    if revives ~= '' and tonumber(redis.call('HGET', KEYS[1], revives) or '0') > 0 then
      redis.call('HINCRBY', KEYS[1], revives, -1)
    else
      counted = counted + 1
    end
    if whole then redis.call('SET', KEYS[i + n], ARGV[1]) end
    created = created + 1
    out[#out + 1] = (due and due > now) and 'scheduled' or 'created'
  end
end
if created > 0 then
  redis.call('HINCRBY', KEYS[1], 'total', counted)
  redis.call('HSETNX', KEYS[1], 'created', now)
  if redis.call('HGET', KEYS[1], 'done') == '1' then
    redis.call('HSET', KEYS[1], 'done', 0)
    redis.call('HDEL', KEYS[1], 'finished', 'summarized')
  end
  if whole then
    redis.call('SET', KEYS[OPEN_ALL], math.max(0, open_all + created))
    redis.call('SADD', KEYS[OPEN_ALL + 1], ARGV[1])
    redis.call('ZREM', KEYS[OPEN_ALL + 2], ARGV[1])
  end
end
return out
