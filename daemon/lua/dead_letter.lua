-- Move a task from the processing list to the dead letters, its counter and stamp dropped.
-- Replies {1}, or {0} when the task was no longer in the processing list.
local processing = KEYS[1]
local dead = KEYS[2]
local attempts = KEYS[3]
local alive = KEYS[4]
local stamps = KEYS[5]
local body = ARGV[1]
local entry = ARGV[2]
local digest = ARGV[3]
local owner = ARGV[4]

local holder = redis.call('GET', alive)
if holder and holder ~= owner then return {-2, holder} end

if redis.call('LREM', processing, 1, body) == 0 then return {0} end
redis.call('LPUSH', dead, entry)
redis.call('HDEL', attempts, digest)
redis.call('ZREM', stamps, digest)
return {1}
