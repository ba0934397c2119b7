-- A failed attempt, in one step: count it, then schedule the retry (delay doubling from
-- retry_base, capped) or, at the last attempt, dead-letter it (the JSON document gets the
-- final count). Nothing happens when the task is no longer in the processing list, so the
-- count is never taken twice for one failure. Replies {outcome, attempts, delay}.
local processing = KEYS[1]
local attempts = KEYS[2]
local delayed = KEYS[3]
local dead = KEYS[4]
local alive = KEYS[5]
local stamps = KEYS[6]
local body = ARGV[1]
local digest = ARGV[2]
local max_attempts = tonumber(ARGV[3])
local retry_base = tonumber(ARGV[4])
local retry_cap = tonumber(ARGV[5])
local token = ARGV[6]
local entry = ARGV[7]
local owner = ARGV[8]

local holder = redis.call('GET', alive)
if holder and holder ~= owner then return {-2, holder} end

if redis.call('LREM', processing, 1, body) == 0 then return {-1, 0, '0'} end
local n = redis.call('HINCRBY', attempts, digest, 1)
if n >= max_attempts then
  local doc = cjson.decode(entry)
  doc['attempts'] = n
  redis.call('LPUSH', dead, cjson.encode(doc))
  redis.call('HDEL', attempts, digest)
  redis.call('ZREM', stamps, digest)
  return {1, n, '0'}
end
local delay = math.min(retry_cap, retry_base * 2 ^ (n - 1))
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', delayed, now + delay, token .. body)
return {0, n, tostring(delay)}
