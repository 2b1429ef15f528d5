-- retry -> pending, or scheduled -> pending, once the due time has come (a retry's backoff, a delayed
-- task's run_at), for a batch of one job's tasks in one of those states.
-- KEYS[1] the job's retry or scheduled zset (scored by due time), KEYS[2] pending zset
-- ARGV[1] the state KEYS[1] holds ('retry' or 'scheduled'), ARGV[2] task key prefix (the task keys carry
-- the job's hash tag, like KEYS), ARGV[3] the caller's watcher lease fence in ms (0: none; see
-- requeue.lua), ARGV[4..] ids. Returns the ids moved to pending (to be published), or 0 (nothing done)
-- once this server's clock has reached the fence.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local fence = tonumber(ARGV[3])
if fence > 0 and now >= fence then return 0 end
local state = ARGV[1]
if state ~= 'retry' and state ~= 'scheduled' then return redis.error_reply('promote: not a due state: ' .. state) end
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local due = redis.call('ZSCORE', KEYS[1], id)
  if due and tonumber(due) <= now then
    redis.call('ZREM', KEYS[1], id)
    if redis.call('HGET', ARGV[2] .. id, 'state') == state then
      redis.call('HSET', ARGV[2] .. id, 'state', 'pending')
      redis.call('ZADD', KEYS[2], now, id)
      out[#out + 1] = id
    end
  end
end
return out
