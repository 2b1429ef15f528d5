-- running -> pending, handing a task back without counting the attempt (a draining worker's grace
-- period ran out). Fenced: only the live execution may hand its task back.
-- KEYS[1] task, KEYS[2] running, KEYS[3] pending, KEYS[4] leased; ARGV[1] id, ARGV[2] execution id
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local st = redis.call('HMGET', KEYS[1], 'state', 'exec', 'attempts')
if st[1] ~= 'running' or st[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'pending', 'attempts', math.max(0, tonumber(st[3]) - 1))
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[1])
return 1
