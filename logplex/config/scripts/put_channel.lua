-- ARGV: channel, channel json, create only (1/0), then pairs of (token id, token json)
-- to add, then '--', then token ids to remove.
local exists = redis.call('HEXISTS', channels, ARGV[1]) == 1
if exists and ARGV[3] == '1' then return 'exists' end
if not exists then redis.call('HSET', channels, ARGV[1], ARGV[2]) end
local i = 4
while ARGV[i] ~= '--' do
  redis.call('HSET', tokens, ARGV[i], ARGV[i + 1])
  redis.call('SADD', chtok, ARGV[i])
  i = i + 2
end
for j = i + 1, #ARGV do
  redis.call('HDEL', tokens, ARGV[j])
  redis.call('SREM', chtok, ARGV[j])
end
if exists then return announce('updated') end
return announce('created')
