local key, mark = KEYS[1], KEYS[2]
if redis.call('GET', mark) == ARGV[1] then return 0 end
for i = 4, #ARGV, 1000 do redis.call('RPUSH', key, unpack(ARGV, i, math.min(i + 999, #ARGV))) end
if #ARGV > 3 and tonumber(ARGV[2]) > 0 then
  redis.call('LTRIM', key, 0, tonumber(ARGV[2]) - 1)
  redis.call('EXPIRE', key, tonumber(ARGV[3]))
end
redis.call('SET', mark, ARGV[1], 'EX', 604800)
return #ARGV - 3
