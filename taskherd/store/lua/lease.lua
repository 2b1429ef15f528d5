-- pending -> running with a fresh execution id (the fencing token) and a lease that expires.
-- Ahead (the slot leases it while its executor runs another): also into the job's leased set, until
-- the slot starts it (start.lua) or the lease ends (finish, release, requeue).
-- KEYS[1] task, KEYS[2] pending zset, KEYS[3] running zset, KEYS[4] leased set
-- ARGV[1] task id, ARGV[2] execution id, ARGV[3] worker (node/slot), ARGV[4] lease ttl ms, ARGV[5] ahead (1|0)
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local st = redis.call('HMGET', KEYS[1], 'state', 'timeout_s', 'attempts', 'max_attempts', 'type', 'payload', 'priority')
if not st[1] then return {'gone'} end
if st[1] ~= 'pending' then return {'dup', st[1]} end
local attempts = tonumber(st[3]) + 1
local deadline = now + math.floor(tonumber(st[2]) * 1000)
redis.call('HSET', KEYS[1], 'state', 'running', 'exec', ARGV[2], 'worker', ARGV[3], 'started', now,
  'deadline', deadline, 'attempts', attempts)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], math.min(now + tonumber(ARGV[4]), deadline + tonumber(ARGV[4])), ARGV[1])
if ARGV[5] == '1' then redis.call('SADD', KEYS[4], ARGV[1]) end
return {'ok', st[5], st[6], st[2], tostring(attempts), st[4], tostring(now), st[7] or '5'}
