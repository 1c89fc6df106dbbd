local last, expiry, at = tonumber(ARGV[1]), tonumber(ARGV[2]), 3
for i = 1, #KEYS do
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
return #KEYS
