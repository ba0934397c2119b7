-- Clean stop (or giving back an id not used): say goodbye, but only for an id that is still
-- ours. The worker stays registered while its processing list holds anything (a killed
-- predecessor's task): the registry is how peers find that list to recover it.
local alive = KEYS[1]
local workers = KEYS[2]
local processing = KEYS[3]
local owner = ARGV[1]
local worker = ARGV[2]

if redis.call('GET', alive) ~= owner then return 0 end
redis.call('DEL', alive)
if redis.call('LLEN', processing) == 0 then redis.call('ZREM', workers, worker) end
return 1
