-- A running execution whose lease expired (its worker died, hung, or overran its deadline):
-- back to pending, or to analyzing as failed when out of attempts.
-- KEYS[1] task, KEYS[2] executions list, KEYS[3] running, KEYS[4] pending, KEYS[5] analyzing, KEYS[6] leased
-- ARGV[1] id, ARGV[2] the caller's watcher lease fence in ms (0: none). Returns 'lapsed' (nothing done)
-- once this server's clock has reached the fence: a watcher that stalled mid-sweep (cut off, paused)
-- while another took its lease over must not act beside it.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local fence = tonumber(ARGV[2])
if fence > 0 and now >= fence then return 'lapsed' end
local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not score or tonumber(score) > now then return 'alive' end
local st = redis.call('HMGET', KEYS[1], 'state', 'exec', 'attempts', 'max_attempts', 'worker', 'started', 'cancelled')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[6], ARGV[1])
if st[1] ~= 'running' then return 'stale' end
local err = 'lease expired: worker ' .. (st[5] or '?') .. ' stopped renewing or overran the deadline'
redis.call('RPUSH', KEYS[2], cjson.encode({exec = st[2], worker = st[5], started = tonumber(st[6]),
  ended = now, status = 'lost', error = err}))
if st[7] then
  redis.call('HSET', KEYS[1], 'state', 'analyzing', 'outcome', 'cancelled', 'error', 'cancelled', 'finished', now)
  redis.call('ZADD', KEYS[5], now, ARGV[1])
  return 'analyzing'
end
if tonumber(st[3]) < tonumber(st[4]) then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'error', err)
  redis.call('ZADD', KEYS[4], now, ARGV[1])
  return 'pending'
end
redis.call('HSET', KEYS[1], 'state', 'analyzing', 'outcome', 'failed', 'error', err, 'finished', now)
redis.call('ZADD', KEYS[5], now, ARGV[1])
return 'analyzing'
