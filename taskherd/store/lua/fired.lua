-- A tick of a schedule was submitted (its task id is deterministic, so a repeat is a no-op): move the
-- schedule's next fire time on, only if it is still the one the caller read and the schedule was not
-- replaced meanwhile. Every manager's Scheduler may race for the same tick; one advances it, the
-- others find it moved and do nothing, and a caller that died between submit and advance leaves the
-- tick for another to submit again (answered 'exists') and advance.
-- KEYS[1] definitions hash, KEYS[2] next-fire zset, KEYS[3] last-firing hash;
-- ARGV[1] name, ARGV[2] sha1 of the definition read, ARGV[3] the next fire time read (ms),
-- ARGV[4] the following one (ms), ARGV[5] the firing's record (JSON).
-- Returns 1 if advanced, 0 if another had (or the schedule changed or went).
local def = redis.call('HGET', KEYS[1], ARGV[1])
if not def or redis.sha1hex(def) ~= ARGV[2] then return 0 end
local nxt = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not nxt or tonumber(nxt) ~= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
return 1
