-- Give up a task id's claim that a submit made and did not use (nothing created: refused, cancelled,
-- answered from a tombstone): only while it is still this job's unconfirmed claim (a TTL), so an id a
-- concurrent submit of the same job created and confirmed is kept.
-- KEYS[1] the id's index key; ARGV[1] job. Returns 1 when it was given up.
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('PTTL', KEYS[1]) > 0 then
  return redis.call('DEL', KEYS[1])
end
return 0
