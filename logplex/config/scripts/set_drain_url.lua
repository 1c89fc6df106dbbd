-- ARGV: channel, drain id, url
local doc = redis.call('HGET', drains, ARGV[2])
if not doc then return 'nodrain' end
local drain = cjson.decode(doc)
if drain['channel_id'] ~= ARGV[1] then return 'nodrain' end
for _, id in ipairs(redis.call('SMEMBERS', chdrain)) do
  if id ~= ARGV[2] then
    local other = redis.call('HGET', drains, id)
    if other and cjson.decode(other)['url'] == ARGV[3] then return 'dup' end
  end
end
drain['url'] = ARGV[3]
redis.call('HSET', drains, ARGV[2], cjson.encode(drain))
return announce('ok')
