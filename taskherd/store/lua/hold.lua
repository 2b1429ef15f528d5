-- Take or extend a singleton lease (e.g. the one active TimeoutWatcher) in one step: a holder keeps
-- it by extending it, anyone takes it once it has lapsed. Take and extend are one script, so a
-- lease that lapses between a check and an extend can never be extended by its former holder.
-- KEYS[1] lease; ARGV[1] holder, ARGV[2] ttl ms. Returns 1 if ARGV[1] holds it now, 2 if it was just
-- taken (it was free or lapsed), 0 if another holds it.
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
