-- Startup: take the worker id when nobody holds it, we do, or the holder is the record the
-- caller found dead (`replace`, '' for none). Replies false, or the holder's record.
local alive = KEYS[1]
local owner = ARGV[1]
local ttl_ms = ARGV[2]
local replace = ARGV[3]

local holder = redis.call('GET', alive)
if holder and holder ~= owner and (replace == '' or holder ~= replace) then
  return holder
end
redis.call('SET', alive, owner, 'PX', ttl_ms)
return false
