-- Register an executor or analyzer spec for a task type, idempotently.
-- KEYS[1] spec key; ARGV[1] spec JSON (canonical), ARGV[2] '1' to replace a different spec
local old = redis.call('GET', KEYS[1])
if old == ARGV[1] then return 'unchanged' end
if old and ARGV[2] ~= '1' then return 'conflict' end
redis.call('SET', KEYS[1], ARGV[1])
if old then return 'replaced' end
return 'created'
