local last, expiry, writes, call = tonumber(ARGV[1]), tonumber(ARGV[2]), KEYS[1], ARGV[3]
local at = 5 + tonumber(ARGV[4])
if at > 5 then redis.call('HDEL', writes, unpack(ARGV, 5, at - 1)) end
if redis.call('HSETNX', writes, call, 1) == 0 then return -1 end
redis.call('EXPIRE', writes, 86400)
for i = 2, #KEYS do
  local count = tonumber(ARGV[at])
  local refresh = count > 0
  if not refresh then count = -count end
  local key, to = KEYS[i], at + count
  local from, length = at + 1, 0
  while from <= to do
    local upto = math.min(to, from + 999)
    length = redis.call('LPUSH', key, unpack(ARGV, from, upto))
    from = upto + 1
  end
  if length > last + 1 then redis.call('LTRIM', key, 0, last) end
  if refresh or length == count then redis.call('EXPIRE', key, expiry) end
  at = to + 1
end
return #KEYS - 1
