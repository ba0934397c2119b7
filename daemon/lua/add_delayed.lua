-- Schedule tasks on Redis's clock (daemon/producer.py): all members of one call share one
-- due time, which is also their enqueue stamp (a task is pending, and ages, from when it is
-- due). The trim comes last, as in push.lua. Replies {delayed set size, due time}.
local delayed = KEYS[1]
local stamps = KEYS[2]
local delay = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
-- then n members (token .. body), then their n digests: ARGV[4] ... ARGV[3 + 2n]

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = now + delay
for i = 4, 3 + n do
  redis.call('ZADD', delayed, due, ARGV[i])
  redis.call('ZADD', stamps, 'NX', due, ARGV[i + n])
end
redis.pcall('ZREMRANGEBYSCORE', stamps, '-inf', '(' .. (now - keep))
return {redis.call('ZCARD', delayed), tostring(due)}
