-- Back from the dead letters: pending again from now on (stamped anew, Redis's clock).
-- Replies 1, or 0 when the dead letter was gone.
local dead = KEYS[1]
local pending = KEYS[2]
local stamps = KEYS[3]
local entry = ARGV[1]
local body = ARGV[2]
local digest = ARGV[3]

if redis.call('LREM', dead, 1, entry) == 0 then return 0 end
redis.call('LPUSH', pending, body)
local t = redis.call('TIME')
redis.call('ZADD', stamps, 'NX', tonumber(t[1]) + tonumber(t[2]) / 1000000, digest)
return 1
