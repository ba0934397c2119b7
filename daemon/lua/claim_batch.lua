-- Claim up to n tasks from the pending list's right end (FIFO) into the processing list, at
-- once: every claimed task is in the processing list before the reply leaves Redis. The
-- RPOP comes first: on Redis 6.2 a removal lets the push follow under OOM (LMOVE is refused
-- then). Replies the bodies in claim order, oldest first; the caller bounds n.
local pending = KEYS[1]
local processing = KEYS[2]
local n = tonumber(ARGV[1])

local bodies = redis.call('RPOP', pending, n)
if not bodies then return {} end
redis.call('LPUSH', processing, unpack(bodies))
return bodies
