-- Included by the recovery scripts (not a script of its own): each task of `source` goes back
-- to the front of `pending` in claim order, counted as a failed attempt; one at its last
-- attempt goes to `doomed_list` instead, for the caller to dead-letter. `source` is emptied
-- first, so `doomed_list` may be `source` itself.
local function give_back(source, pending, attempts, doomed_list, max_attempts)
  local items = redis.call('LRANGE', source, 0, -1)
  redis.call('DEL', source)
  local returned, doomed = 0, {}
  for _, body in ipairs(items) do
    if redis.call('HINCRBY', attempts, redis.sha1hex(body), 1) >= max_attempts then
      redis.call('RPUSH', doomed_list, body)
      doomed[#doomed + 1] = body
    else
      redis.call('RPUSH', pending, body)  -- newest claimed first: the oldest ends rightmost
      returned = returned + 1
    end
  end
  return returned, doomed
end
