-- The runtime state of a job done long enough ago leaves Redis (its summary and tasks stay in MySQL).
-- Only if it is still done: a job that took new tasks since (submit.lua) is open and kept.
-- KEYS[1] meta, KEYS[2] rung, KEYS[3..] the live-state zsets (empty when done). Returns 1 when expired
-- (the caller then takes the job out of the done jobs, a global key), 0 when kept.
if redis.call('HGET', KEYS[1], 'done') ~= '1' then return 0 end
for i = 3, #KEYS do
  if redis.call('ZCARD', KEYS[i]) > 0 then return 0 end
end
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
