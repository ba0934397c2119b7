-- Push and stamp on Redis's clock, in one step (daemon/producer.py). The bodies go in one
-- LPUSH (the first given is consumed first, as with a plain LPUSH), the stamps in one ZADD;
-- the score stays TIME's text (cheaper than formatting a Lua number). The LPUSH is the
-- first write: a full Redis refuses it (the trim, a removal, would otherwise let a plain
-- script go on writing under OOM). The trim is a pcall: a producer ACL user set up before
-- stamps (no +zremrangebyscore) must not see an error for a push that is stored (it would
-- push again: a duplicate). Replies the pending list's length.
local pending = KEYS[1]
local stamps = KEYS[2]
local keep = ARGV[1]  -- seconds of stamps kept, or '' not to trim now
local n = tonumber(ARGV[2])
-- then n bodies, then their n digests: ARGV[3] ... ARGV[2 + 2n]

local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local depth = redis.call('LPUSH', pending, unpack(ARGV, 3, 2 + n))
local members = {}
for i = 3 + n, 2 + 2 * n do
  members[#members + 1] = now
  members[#members + 1] = ARGV[i]
end
redis.call('ZADD', stamps, 'NX', unpack(members))
if keep ~= '' then
  redis.pcall('ZREMRANGEBYSCORE', stamps, '-inf', '(' .. (tonumber(now) - tonumber(keep)))
end
return depth
