-- Create or replace a schedule, and set when it fires next.
-- KEYS[1] definitions hash, KEYS[2] next-fire zset; ARGV[1] name, ARGV[2] definition (canonical
-- JSON), ARGV[3] its first fire time (Unix ms). The same definition again changes nothing (its next
-- fire time stays), so a PUT repeated by a deploy script never moves or repeats a tick.
-- Returns 'created', 'replaced' or 'unchanged'.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old == ARGV[2] and redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 'unchanged' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if old then return 'replaced' end
return 'created'
