-- Writes a node's copy of the config back to a config Redis it refuses (ConfigStore._reseed).
--
-- KEYS: cluster id, epoch, version, feed, channels, tokens, drains, creds, channel seq,
-- drain seq, then (chtok, chdrain) of each channel in the document's order, then the sets
-- of the channels the Redis holds and the node does not (deleted since, when it is older).
-- ARGV: the cluster id, epoch and version the node holds, the document, and '1' to
-- replace what the Redis holds (an older config: what was deleted since stays deleted)
-- or '0' to add to it (an empty one: a write that landed before anyone noticed stays).
-- Runs only while the Redis has no cluster id or the node's, and an older
-- generation than the node's: a second node, or a stale one, changes nothing.
local cluster, epochk, version, feed, channels, tokens, drains, creds, chseq, drseq = unpack(KEYS, 1, 10)
local cur = redis.call('GET', cluster)
if cur and cur ~= ARGV[1] then return 'foreign' end
local epoch_now = tonumber(redis.call('GET', epochk) or '0')
local ver_now = tonumber(redis.call('GET', version) or '0')
local epoch_held, ver_held = tonumber(ARGV[2]), tonumber(ARGV[3])
if cur and (epoch_now > epoch_held or (epoch_now == epoch_held and ver_now >= ver_held)) then
  return 'current'
end
local doc = cjson.decode(ARGV[4])
if ARGV[5] == '1' then
  redis.call('DEL', channels, tokens, drains, creds)
  for i = 11 + 2 * #doc['channels'], #KEYS do redis.call('DEL', KEYS[i]) end
end
local max_channel = tonumber(redis.call('GET', chseq) or '0')
for i, ch in ipairs(doc['channels']) do
  local id, json = ch[1], ch[2]
  redis.call('HSET', channels, id, json)
  if string.match(id, '^%d+$') and tonumber(id) > max_channel then max_channel = tonumber(id) end
  for _, t in ipairs(ch[3]) do
    redis.call('HSET', tokens, t[1], t[2])
    redis.call('SADD', KEYS[9 + 2 * i], t[1])
  end
  for _, d in ipairs(ch[4]) do
    redis.call('HSET', drains, d[1], d[2])
    redis.call('SADD', KEYS[10 + 2 * i], d[1])
  end
end
for _, c in ipairs(doc['creds']) do redis.call('HSET', creds, c[1], c[2]) end
redis.call('SET', chseq, string.format('%d', max_channel))
local max_drain = tonumber(redis.call('GET', drseq) or '0')
if doc['max_drain'] > max_drain then max_drain = doc['max_drain'] end
redis.call('SET', drseq, string.format('%d', max_drain))
redis.call('SET', cluster, ARGV[1])
redis.call('SET', epochk, string.format('%d', math.max(epoch_now, epoch_held) + 1))
redis.call('SET', version, string.format('%d', math.max(ver_now, ver_held) + 1))
redis.call('PUBLISH', feed, 'reseeded')
return 'ok'
