-- Delete a schedule: its definition, its next fire time and its last firing, in one step, so no
-- Scheduler can advance it half-deleted.
-- KEYS[1] definitions hash, KEYS[2] next-fire zset, KEYS[3] last-firing hash; ARGV[1] name.
-- Returns 1 if it existed, 0 if not.
local existed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return existed
