-- At startup: what our previous process held when it stopped goes back to the front of the
-- pending list (in claim order), each task counted as a failed attempt (a task that kills
-- its worker ends in the dead letters); one at its last attempt stays in the processing
-- list, for the caller to dead-letter. Replies {returned, doomed bodies}.
local processing = KEYS[1]
local pending = KEYS[2]
local attempts = KEYS[3]
local alive = KEYS[4]
local max_attempts = tonumber(ARGV[1])
local owner = ARGV[2]

local holder = redis.call('GET', alive)
if holder and holder ~= owner then return {-2, holder} end

local items = redis.call('LRANGE', processing, 0, -1)
redis.call('DEL', processing)
local returned, doomed = 0, {}
for _, body in ipairs(items) do
  if redis.call('HINCRBY', attempts, redis.sha1hex(body), 1) >= max_attempts then
    redis.call('RPUSH', processing, body)
    doomed[#doomed + 1] = body
  else
    redis.call('RPUSH', pending, body)  -- newest claimed first: the oldest ends rightmost
    returned = returned + 1
  end
end
return {returned, doomed}
