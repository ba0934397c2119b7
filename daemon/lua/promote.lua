-- Move up to `limit` delayed tasks whose time has come (Redis's clock) back to the front of
-- the pending list, their token prefix cut off. Replies how many moved.
local delayed = KEYS[1]
local pending = KEYS[2]
local limit = tonumber(ARGV[1])
local token_chars = tonumber(ARGV[2])

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  redis.call('ZREM', delayed, member)
  redis.call('RPUSH', pending, string.sub(member, token_chars + 1))
end
return #due
