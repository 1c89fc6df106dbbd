local key, meta, mark = KEYS[1], KEYS[2], KEYS[3]
if redis.call('GET', mark) == ARGV[1] then return 0 end
for i = 4, #ARGV, 1000 do redis.call('LPUSH', key, unpack(ARGV, i, math.min(i + 999, #ARGV))) end
if #ARGV > 3 then
  redis.call('HINCRBY', meta, 'bytes', ARGV[2])
  redis.call('HINCRBY', meta, 'messages', ARGV[3])
end
redis.call('SET', mark, ARGV[1], 'EX', 604800)
return #ARGV - 3
