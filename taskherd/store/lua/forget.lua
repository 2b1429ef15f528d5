-- Teardown deletes a job's live-state sets, counting what they held in the same step (the caller takes
-- that out of the count of open tasks of all jobs), so nothing is counted out twice; the rest of the
-- job's keys go after. KEYS[1..] the job's live-state zsets (pending, running, retry, analyzing,
-- scheduled). Returns how many live tasks they held.
local live = 0
for i = 1, #KEYS do live = live + redis.call('ZCARD', KEYS[i]) end
if live > 0 then
  for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
end
return live
