-- The prelude of every write script: the names of what it touches, which
-- ConfigStore._eval gives as KEYS in this order (logplex.redis.keys spells them).
-- `feed` is a pub/sub channel, not a key; it travels with the keys so that no
-- name is spelled inside a script. chtok and chdrain are the channel's sets
-- (nil for a credential script).
local version, feed, channels, tokens, drains, creds, chtok, chdrain = unpack(KEYS)
