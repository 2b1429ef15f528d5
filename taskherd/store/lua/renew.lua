-- Extend running leases held by one worker; a lease never extends past the task's deadline plus the
-- ttl, so a worker that fails to kill an over-time executor loses the task to the TimeoutWatcher.
-- KEYS[1] running zset, KEYS[2..] task hashes; ARGV[1] ttl ms, then per task: id, execution id,
-- progress (the executor's latest report as JSON naming its execution, or '' for none: written to
-- the task's `progress` field only where the lease is renewed, so it is fenced like the lease).
-- Returns 1 (renewed) or 0 (fenced: superseded, or cancelled: kill the executor) per task.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl, out = tonumber(ARGV[1]), {}
for i = 2, #KEYS do
  local n = 3 * (i - 2) + 2
  local id, exec, progress = ARGV[n], ARGV[n + 1], ARGV[n + 2]
  local st = redis.call('HMGET', KEYS[i], 'state', 'exec', 'deadline', 'cancelled')
  if st[1] == 'running' and st[2] == exec and not st[4] then
    redis.call('ZADD', KEYS[1], 'XX', math.min(now + ttl, tonumber(st[3]) + ttl), id)
    if progress ~= '' then
      redis.call('HSET', KEYS[i], 'progress', progress, 'progress_at', now)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
