-- A drained batch: tasks claimed but never started go back to the front of the pending list
-- (its right end) in claim order, the first claimed being the next popped, no attempt
-- counted. Bodies not in the processing list (a peer recovered them) are skipped.
-- Replies {returned}.
local processing = KEYS[1]
local pending = KEYS[2]
local alive = KEYS[3]
local owner = ARGV[1]
-- then the bodies, oldest claim first: ARGV[2], ARGV[3], ...

local holder = redis.call('GET', alive)
if holder and holder ~= owner then return {-2, holder} end

local returned = 0
for i = #ARGV, 2, -1 do  -- the last claimed first: the first claimed ends rightmost
  if redis.call('LREM', processing, -1, ARGV[i]) == 1 then
    redis.call('RPUSH', pending, ARGV[i])
    returned = returned + 1
  end
end
return {returned}
