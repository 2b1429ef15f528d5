-- A slot started the executor of a task it leased ahead: out of the job's leased set, so the job counts
-- it running. Fenced: only the live execution may, since another slot may hold the task's next lease.
-- KEYS[1] task, KEYS[2] leased set; ARGV[1] id, ARGV[2] execution id. Returns 1, or 0 (not ours).
local st = redis.call('HMGET', KEYS[1], 'state', 'exec')
if st[1] ~= 'running' or st[2] ~= ARGV[2] then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
