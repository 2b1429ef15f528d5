-- Teardown takes a job's live work out of the count of open tasks of all jobs, in the same step as it
-- deletes the job's live-state sets (the rest of the job's keys go after), so nothing is counted out twice.
-- KEYS[1] open tasks of all jobs (a counter), KEYS[2..] the job's live-state zsets (pending, running,
-- retry, analyzing, scheduled). Returns how many live tasks were counted out.
local live = 0
for i = 2, #KEYS do live = live + redis.call('ZCARD', KEYS[i]) end
if live > 0 then
  redis.call('SET', KEYS[1], math.max(0, tonumber(redis.call('GET', KEYS[1]) or '0') - live))
  for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
end
return live
