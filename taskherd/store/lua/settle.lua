-- Move a done job out of the open jobs into the done ones, on one Redis (a cluster settles in steps:
-- `StateStore.settle`). One script, so a teardown or a submit of the job cannot fall between the read
-- of its done flag and the move: a torn-down job is never put back in either set.
-- KEYS[1] the job's meta, KEYS[2] the open jobs, KEYS[3] the done jobs; ARGV[1] the job.
-- Returns 1 when the job is settled (or was never created, or is gone), 0 while it is still open.
local done, finished = unpack(redis.call('HMGET', KEYS[1], 'done', 'finished'))
if not done and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
if done ~= '1' then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], tonumber(finished or '0'), ARGV[1])
return 1
