-- The runtime state of a job done long enough ago leaves Redis (its summary and tasks stay in MySQL).
-- Only if it is still done: a job that took new tasks since (submit.lua) is open and kept.
-- KEYS[1] meta, KEYS[2] rung, KEYS[3..n-2] the live-state zsets (empty when done), KEYS[n-1] open jobs
-- set, KEYS[n] done jobs zset; ARGV[1] job. Returns 1 when expired, 0 when kept.
local n = #KEYS
if redis.call('HGET', KEYS[1], 'done') ~= '1' then return 0 end
for i = 3, n - 2 do
  if redis.call('ZCARD', KEYS[i]) > 0 then return 0 end
end
for i = 1, n - 2 do redis.call('DEL', KEYS[i]) end
redis.call('SREM', KEYS[n - 1], ARGV[1])
redis.call('ZREM', KEYS[n], ARGV[1])
return 1
