-- A done job leaves the set of open jobs (the TimeoutWatcher sweeps only those) for the set of done
-- jobs, scored by when it finished; its runtime state leaves Redis [manager].retain_done_s later
-- (expire.lua). A job that takes new tasks is open again: submit.lua adds it back to the open set.
-- KEYS[1] meta, KEYS[2] open jobs set, KEYS[3] done jobs zset; ARGV[1] job
-- Returns 1 when the job is (now) settled, 0 when it is still open.
local done = redis.call('HMGET', KEYS[1], 'done', 'finished')
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])  -- nothing was ever created in it
  return 1
end
if done[1] ~= '1' then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], tonumber(done[2]) or 0, ARGV[1])
return 1
