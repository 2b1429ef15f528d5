-- An execution's seat back (its executor ended, or its task was given back before it started).
-- KEYS[1] the type's seats; ARGV[1] exec id. Returns 1 if it held one.
return redis.call('ZREM', KEYS[1], ARGV[1])
