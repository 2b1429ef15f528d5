-- Take or extend a singleton lease (e.g. the one active TimeoutWatcher) in one step: a holder keeps
-- it by extending it, anyone takes it once it has lapsed. Take and extend are one script, so a
-- lease that lapses between a check and an extend can never be extended by its former holder.
-- KEYS[1] lease; ARGV[1] holder, ARGV[2] ttl ms. Returns {1, expiry} if ARGV[1] holds it now, {2,
-- expiry} if it was just taken (it was free or lapsed), {0, 0} if another holds it; expiry is when the
-- lease lapses, in ms on this server's clock (the holder fences its acts with it).
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return {0, 0} end
local t = redis.call('TIME')
local expiry = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if cur then return {1, expiry} end
return {2, expiry}
