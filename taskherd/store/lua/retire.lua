-- analyzing -> gone from Redis, for a batch of one job's tasks whose MySQL rows are already committed.
-- Counts each out of its job (after any children were counted in) and marks the job done exactly once,
-- when nothing is open.
-- KEYS[1] meta, KEYS[2] pending, KEYS[3] running, KEYS[4] retry, KEYS[5] analyzing, KEYS[6] scheduled
-- (the caller takes what was retired out of the count of open tasks of all jobs, and lets the ids'
-- index entries lapse: global keys, in a step of their own)
-- ARGV[1] task key prefix, ARGV[2] executions key prefix, ARGV[3] tombstone key prefix, ARGV[4] join
-- hash key prefix, ARGV[5] the job's set of joins, then (id, final state, outcome) triples, the outcome
-- ({id, state, record, error} JSON, or '') given for members of a fan-in join; the task, executions
-- join and tombstone keys carry the job's hash tag, like KEYS.
-- Returns 'ok' or 'skip' (not awaiting analysis: a duplicate) per task, then 'done' or 'open', then the
-- ids of join tasks that fired (to be promoted and published; they are due at once).
-- Fan-in (see join.lua): a retired member is counted out of its join (`join` field), and its outcome
-- kept there if it is a listed child; a retired parent that registered a join counts itself out of it.
-- The join fires when its count of live members reaches 0 once registered: its held task gets the
-- payload (the join's payload with `children`: each listed child's outcome, in order), is made due
-- now in the scheduled set (promote.lua moves it to pending, as for any due task), and the join hash
-- goes. Registration counts the parent in, and the parent retires after it, so the count cannot
-- reach 0 early; every member's children are created (counted in) before it retires.
-- A retired task leaves a tombstone (its digest, for TOMBSTONE_MS) that submit.lua reads: a
-- resubmit whose check of MySQL came just before the archive commit, and reaches Redis just after
-- this removal, is then answered as the archive would have (exists or conflict), not run again.
local TOMBSTONE_MS = 10000
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out, retired, fired = {}, 0, {}

local function forget_join(jid)
  redis.call('DEL', ARGV[4] .. jid)
  redis.call('SREM', ARGV[5], jid)
end

local function fire(jid)
  local jk = ARGV[4] .. jid
  local j = redis.call('HMGET', jk, 'task', 'payload', 'listed')
  local parts = {}
  for _, cid in ipairs(cjson.decode(j[3])) do
    parts[#parts + 1] = redis.call('HGET', jk, 'r:' .. cid)
      or ('{"id":' .. cjson.encode(cid) .. ',"state":"unknown","record":null,"error":null}')
  end
  local rest = (j[2] == '{}') and '}' or (',' .. string.sub(j[2], 2))
  local tk = ARGV[1] .. j[1]
  -- a join task cancelled meanwhile (or torn down) is left as it is
  if redis.call('HGET', tk, 'held') == '1' and redis.call('HGET', tk, 'state') == 'scheduled' then
    redis.call('HSET', tk, 'payload', '{"children":[' .. table.concat(parts, ',') .. ']' .. rest)
    redis.call('HDEL', tk, 'held')
    redis.call('ZADD', KEYS[6], now, j[1])
    fired[#fired + 1] = j[1]
  end
  forget_join(jid)
end

local function count_out(jid)
  if redis.call('EXISTS', ARGV[4] .. jid) == 0 then return end  -- torn down
  local left = redis.call('HINCRBY', ARGV[4] .. jid, 'open', -1)
  if left > 0 then return end
  local j = redis.call('HMGET', ARGV[4] .. jid, 'registered', 'parent_gone')
  if j[1] == '1' then fire(jid) elseif j[2] == '1' then forget_join(jid) end
end

for i = 6, #ARGV, 3 do
  local id, task = ARGV[i], ARGV[1] .. ARGV[i]
  if redis.call('HGET', task, 'state') ~= 'analyzing' then
    out[#out + 1] = 'skip'
  else
    local f = redis.call('HMGET', task, 'digest', 'join', 'parent')
    local digest = f[1]
    if f[2] then
      if ARGV[i + 2] ~= '' and (f[3] == f[2] or redis.call('HEXISTS', ARGV[4] .. f[2], 'l:' .. id) == 1) then
        redis.call('HSET', ARGV[4] .. f[2], 'r:' .. id, ARGV[i + 2])
      end
      count_out(f[2])
    end
    if redis.call('EXISTS', ARGV[4] .. id) == 1 then  -- it declared a join
      if redis.call('HGET', ARGV[4] .. id, 'registered') == '1' then
        count_out(id)
      else  -- members of an analysis that was not registered (run again, it returned no join): let it go
        redis.call('HSET', ARGV[4] .. id, 'parent_gone', 1)
        if tonumber(redis.call('HGET', ARGV[4] .. id, 'open') or '0') <= 0 then forget_join(id) end
      end
    end
    redis.call('SET', ARGV[3] .. id, digest, 'PX', TOMBSTONE_MS)
    redis.call('DEL', task, ARGV[2] .. id)
    redis.call('ZREM', KEYS[5], id)
    redis.call('HINCRBY', KEYS[1], ARGV[i + 1], 1)
    out[#out + 1] = 'ok'
    retired = retired + 1
  end
end
local open = 0
for i = 2, 6 do open = open + redis.call('ZCARD', KEYS[i]) end
if open == 0 and redis.call('HGET', KEYS[1], 'done') ~= '1' then
  redis.call('HSET', KEYS[1], 'done', 1, 'finished', now)
  out[#out + 1] = 'done'
else
  out[#out + 1] = 'open'
end
for _, id in ipairs(fired) do out[#out + 1] = id end
return out
