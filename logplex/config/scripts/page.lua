-- KEYS: a hash; ARGV: an HSCAN cursor, a page size. One page of the hash as one JSON array of
-- key, record, key, record… (the records are the JSON the write scripts wrote, spliced in as
-- they are) and the next cursor. A node loading the config reads it page by page: one
-- reply element per page rather than two per record, which txredisapi parses one reactor
-- turn each, and one json.loads per page rather than one per record.
local reply = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local items, encode = reply[2], cjson.encode
for i = 1, #items, 2 do items[i] = encode(items[i]) end
return {reply[1], '[' .. table.concat(items, ',') .. ']'}
