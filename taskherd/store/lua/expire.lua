-- The runtime state of a job done long enough ago leaves Redis (its summary and tasks stay in MySQL).
-- Only if it is still done: a job that took new tasks since (submit.lua) is open and kept.
-- KEYS[1] meta, KEYS[2] rung, KEYS[3..6] the live-state zsets (empty when done), KEYS[7] open jobs
-- set, KEYS[8] done jobs zset; ARGV[1] job. Returns 1 when expired, 0 when kept.
if redis.call('HGET', KEYS[1], 'done') ~= '1' then return 0 end
for i = 3, 6 do
  if redis.call('ZCARD', KEYS[i]) > 0 then return 0 end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('SREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
return 1
