-- retry -> pending once the retry's due time has come.
-- KEYS[1] task, KEYS[2] retry zset, KEYS[3] pending zset; ARGV[1] id
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not due or tonumber(due) > now then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'state') ~= 'retry' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'pending')
redis.call('ZADD', KEYS[3], now, ARGV[1])
return 1
