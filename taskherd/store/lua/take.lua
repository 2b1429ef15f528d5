-- Take what one start of a limited task type needs: a seat (max_concurrency) and a token
-- (rate_limit_per_s, burst); both or neither. Over a limit nothing is taken and the answer says how
-- long to wait: the task stays pending (not leased, so no attempt is counted).
-- KEYS[1] the type's token bucket, KEYS[2] its seats; ARGV[1] rate per s ('' none), ARGV[2] burst,
-- ARGV[3] max concurrency ('' none), ARGV[4] exec id, ARGV[5] seat ttl ms.
-- Returns {1} taken, or {0, wait ms, 'rate'|'concurrency'}.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local max, rate = tonumber(ARGV[3]), tonumber(ARGV[1])
if max then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)  -- seats of dead workers lapse with their leases
  if redis.call('ZCARD', KEYS[2]) >= max and not redis.call('ZSCORE', KEYS[2], ARGV[4]) then
    return {0, 200, 'concurrency'}
  end
end
if rate then
  local burst = tonumber(ARGV[2])
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  if tokens < 1 then
    return {0, math.ceil((1 - tokens) * 1000 / rate), 'rate'}
  end
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens - 1), 'at', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
end
if max then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]) + 60000)
end
return {1}
