-- Reserve room for a bounded submit's new tasks under `[manager].max_open_tasks`, before they are
-- created (the count is global, the tasks are in their job's slot): what is not created is given back
-- (count.lua). KEYS[1] open tasks of all jobs; ARGV[1] new tasks, ARGV[2] the bound.
-- Returns {'ok'} or {'full', open now}.
local open = tonumber(redis.call('GET', KEYS[1]) or '0')
if open + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {'full', open} end
redis.call('INCRBY', KEYS[1], ARGV[1])
return {'ok'}
