-- Add ARGV[1] (negative to take out) to the count of open tasks of all jobs, KEYS[1], never below 0: a
-- count that started after tasks were live under-counts until they drain, and never blocks for ever.
local n = math.max(0, tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], n)
return n
