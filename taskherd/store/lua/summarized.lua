-- Mark a done job's summary as written to MySQL, unless the job was torn down meanwhile: HSET would
-- recreate its meta key, a key of the job left behind after teardown.
-- KEYS[1] job meta
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'summarized', 1)
return 1
