-- ARGV: channel, drain id, drain json, url ('' = reserve), max drains
if redis.call('HEXISTS', channels, ARGV[1]) == 0 then return 'nochannel' end
if redis.call('SCARD', chdrain) >= tonumber(ARGV[5]) then return 'max' end
if ARGV[4] ~= '' then
  for _, id in ipairs(redis.call('SMEMBERS', chdrain)) do
    local doc = redis.call('HGET', drains, id)
    if doc and cjson.decode(doc)['url'] == ARGV[4] then return 'dup' end
  end
end
redis.call('HSET', drains, ARGV[2], ARGV[3])
redis.call('SADD', chdrain, ARGV[2])
return announce('ok')
