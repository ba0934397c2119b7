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
--#include give_back

local holder = redis.call('GET', alive)
if holder and holder ~= owner then return {-2, holder} end

local returned, doomed = give_back(processing, pending, attempts, processing, max_attempts)
return {returned, doomed}
