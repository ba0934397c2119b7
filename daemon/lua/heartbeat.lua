-- Heartbeat: renew the id only while it is ours (an expiry first, so 6.2 lets the ZADD
-- follow under OOM); an id that expired meanwhile (an outage) and nobody took is taken
-- again. Replies false, or the record of the process that holds the id.
local alive = KEYS[1]
local workers = KEYS[2]
local owner = ARGV[1]
local ttl_ms = ARGV[2]
local now = ARGV[3]
local worker = ARGV[4]

local holder = redis.call('GET', alive)
if holder and holder ~= owner then return holder end
if holder then
  redis.call('PEXPIRE', alive, ttl_ms)
else
  redis.call('SET', alive, owner, 'PX', ttl_ms)
end
redis.call('ZADD', workers, now, worker)
return false
