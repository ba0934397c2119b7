-- After a lost claim reply: every task of our processing list that we do not hold goes back
-- to the front of the pending list (in claim order), no attempt counted (it was never seen).
-- The tasks held (a batch, tasks in flight) are listed after the owner, a multiset: each
-- listed body leaves one copy in place. Replies {returned}.
local processing = KEYS[1]
local pending = KEYS[2]
local alive = KEYS[3]
local owner = ARGV[1]
-- then the bodies held: ARGV[2], ARGV[3], ...

local holder = redis.call('GET', alive)
if holder and holder ~= owner then return {-2, holder} end

local held = {}
for i = 2, #ARGV do held[ARGV[i]] = (held[ARGV[i]] or 0) + 1 end
local items = redis.call('LRANGE', processing, 0, -1)
redis.call('DEL', processing)
local returned = 0
for _, body in ipairs(items) do
  if (held[body] or 0) > 0 then
    held[body] = held[body] - 1
    redis.call('RPUSH', processing, body)  -- held: stays, in its place
  else
    redis.call('RPUSH', pending, body)  -- newest claimed first: the oldest ends rightmost
    returned = returned + 1
  end
end
return {returned}
