-- Renew the seats of running executions with their leases (a seat lapses like its lease when its
-- worker dies, so a SIGKILL never leaks one). Only seats still held are renewed (XX).
-- KEYS[1] the type's seats; ARGV[1] ttl ms, ARGV[2..] exec ids.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local until_ms = now + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 60000)
return 1
