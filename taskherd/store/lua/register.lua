-- Register an executor or analyzer spec for a task type, idempotently.
-- KEYS[1] spec key, KEYS[2] specs version; ARGV[1] spec JSON (canonical), ARGV[2] '1' to replace a
-- different spec, ARGV[3] a fresh token for the specs version (set whenever a spec changes)
local old = redis.call('GET', KEYS[1])
if old == ARGV[1] then return 'unchanged' end
if old and ARGV[2] ~= '1' then return 'conflict' end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[3])
if old then return 'replaced' end
return 'created'
