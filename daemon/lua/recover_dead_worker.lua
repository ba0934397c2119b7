-- A peer's tasks, once its heartbeat is gone: each task of its processing list goes back to
-- the front of the pending list (in claim order) counted as a failed attempt, or, at its
-- last attempt, into the recoverer's own processing list, from where the caller
-- dead-letters it. The dead worker is then forgotten. Several recoverers on several hosts
-- may race for the same dead worker: the first takes everything, the others find nothing.
-- Replies {returned, doomed bodies}, or {-1, {}} while the worker is alive.
local source = KEYS[1]
local pending = KEYS[2]
local attempts = KEYS[3]
local recoverer = KEYS[4]
local alive = KEYS[5]
local workers = KEYS[6]
local max_attempts = tonumber(ARGV[1])
local worker = ARGV[2]
--#include give_back

if redis.call('EXISTS', alive) == 1 then return {-1, {}} end

local returned, doomed = give_back(source, pending, attempts, recoverer, max_attempts)
redis.call('ZREM', workers, worker)
return {returned, doomed}
