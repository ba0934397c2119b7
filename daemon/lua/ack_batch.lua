-- Settle finished tasks: each leaves the processing list with its attempt counter and its
-- enqueue stamp. Replies, flat and in order, {removed, failures before} per task: removed
-- is 0 when a peer recovered the task while it ran.
local processing = KEYS[1]
local attempts = KEYS[2]
local alive = KEYS[3]
local stamps = KEYS[4]
local owner = ARGV[1]
-- then (body, digest) pairs: ARGV[2], ARGV[3], ...

-- our own list: only while the worker id holds our record, or none (expired in an outage)
local holder = redis.call('GET', alive)
if holder and holder ~= owner then return {-2, holder} end

local reply = {}
for i = 2, #ARGV - 1, 2 do
  local body, digest = ARGV[i], ARGV[i + 1]
  local failures = redis.call('HGET', attempts, digest)
  local removed = redis.call('LREM', processing, 1, body)
  if failures then redis.call('HDEL', attempts, digest) end
  if removed == 1 then redis.call('ZREM', stamps, digest) end
  reply[#reply + 1] = removed
  reply[#reply + 1] = tonumber(failures) or 0
end
return reply
