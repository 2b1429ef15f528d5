-- Confirm a task id's claim once its task is created: the index names the job with no TTL (a claim is
-- made with one, so an id claimed by a submit that never created it frees itself). A claim of the
-- same job given up meanwhile by a concurrent submit that created nothing is taken again.
-- KEYS[1] the id's index key; ARGV[1] job. Returns 1, or 0 when another job holds it.
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
