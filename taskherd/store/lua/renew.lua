-- Extend running leases held by one worker; a lease never extends past the task's deadline plus the
-- ttl, so a worker that fails to kill an over-time executor loses the task to the TimeoutWatcher.
-- KEYS[1] running zset, KEYS[2..] task hashes; ARGV[1] ttl ms, then per task: id, execution id
-- Returns 1 (renewed) or 0 (fenced: superseded, or cancelled: kill the executor) per task.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl, out = tonumber(ARGV[1]), {}
for i = 2, #KEYS do
  local id, exec = ARGV[2 * (i - 1)], ARGV[2 * (i - 1) + 1]
  local st = redis.call('HMGET', KEYS[i], 'state', 'exec', 'deadline', 'cancelled')
  if st[1] == 'running' and st[2] == exec and not st[4] then
    redis.call('ZADD', KEYS[1], 'XX', math.min(now + ttl, tonumber(st[3]) + ttl), id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
