-- What the spool scripts share; spool.py puts it in front of each of them.
-- A spool is a list of chunks (each starts "1 <frame id> <count> ") and a
-- hash of its bytes and messages, kept in step by every script.

-- The messages of a chunk, from its head.
local function count_of(chunk)
  return tonumber(string.match(chunk, '^1 %S+ (%d+) '))
end

-- The bytes a spool holds (0 once it is gone).
local function bytes_of(meta)
  return tonumber(redis.call('HGET', meta, 'bytes') or 0)
end

-- Keeps a spool within its bound the way every write does: the oldest whole
-- chunks of `list` go until `meta` counts at most `max` bytes (the last chunk
-- always stays), except the chunk of frame id `protect` ('' if none), which is
-- being delivered right now: dropping it would count its messages lost and
-- deliver them both. Answers the messages and chunks dropped.
local function trim(list, meta, max, protect)
  local protected = '1 ' .. protect .. ' '
  local dropped, dropped_chunks = 0, 0
  while tonumber(redis.call('HGET', meta, 'bytes')) > max and redis.call('LLEN', list) > 1 do
    local head = redis.call('LPOP', list)
    if protect ~= '' and string.sub(head, 1, #protected) == protected then
      local victim = redis.call('LPOP', list)
      redis.call('LPUSH', list, head)
      head = victim
    end
    local n = count_of(head)
    redis.call('HINCRBY', meta, 'bytes', -#head)
    redis.call('HINCRBY', meta, 'messages', -n)
    dropped = dropped + n
    dropped_chunks = dropped_chunks + 1
  end
  return dropped, dropped_chunks
end

-- Removes the head chunk of `list` if it is the one of `frame_id` (a bound may
-- have dropped it meanwhile); answers 1 if it did, else 0.
local function remove_head(list, meta, frame_id)
  local head = redis.call('LINDEX', list, 0)
  if head and string.sub(head, 1, #frame_id + 3) == '1 ' .. frame_id .. ' ' then
    redis.call('LPOP', list)
    redis.call('HINCRBY', meta, 'bytes', -#head)
    redis.call('HINCRBY', meta, 'messages', -count_of(head))
    if redis.call('LLEN', list) == 0 then redis.call('DEL', meta) end
    return 1
  end
  return 0
end
