--[[
multiactive journal on Redis Streams: every write of the journal, one atomic call per slot.

The key layout is documented in one place, multiactive/redisdb.py. Every key one call touches
carries the hash tag {<site>:<partition>}, so a call stays inside one slot of a Redis Cluster.
Seqs and counts are exact as Lua numbers (below 2^53); versions are int64, so they stay
decimal strings and are compared as such (dec_greater).

    EVALSHA sha numkeys KEYS... command ARGV...

append  KEYS = ids, then (stream, index, head) of each stream the call writes, in order
        ARGV = "append", then 8 values per batch, in order: stream number (0-based, into the
               triplets of KEYS), first seq, last seq, created ms, max version, codec, the
               batch bytes, and for a local batch a msgpack array seq, id, seq, id... of its
               messages ('' if remote)
        Checks first that every batch starts right after its stream's head (J1, J2: the
        plan of `Journal.plan_local/plan_remote` was made from the same heads); if one does
        not, it writes nothing and fails with "HEAD <stream number> <head>". Then, per batch:
        XADD with id "<last_seq>-0" (Redis refuses an id at or below the top by itself), the
        index entry, head, max version, message count, and the request ids (score = seq).
        Returns the number of batches stored.

known   KEYS = ids
        ARGV = "known", a msgpack array of request ids
        Returns id, seq, id, seq... of the ids already journaled in this partition.

trim    KEYS = stream, index, head, ids
        ARGV = "trim", floor, before (ms), own ("1" when the stream is this site's own)
        Drops the batches with last seq <= floor and created before `before`, from the
        oldest on, stopping at the first batch that must stay, so the rest stays a dense
        suffix (J1, J4). Forgets the request ids of dropped own messages.
        Returns the number of batches dropped.

repair  KEYS = stream, index, head
        ARGV = "repair", first seq, last seq, created ms, max version, codec, batch bytes
        Stores one batch inside a hole below the head (the caller checked the hole): the
        entries above it are taken out, the stream's last id is set back below the batch,
        and they are added again after it, with their ids. Fails with "OVERLAP" if the
        batch overlaps a stored one. Returns 1.
]]

local command = ARGV[1]
local PER_BATCH = 8
local ZADD_CHUNK = 2000 -- score/member values per ZADD call (Lua's unpack has a stack limit)

local function int(n)
  return string.format('%d', n)
end

-- a > b for decimal strings of non-negative integers of any size
local function dec_greater(a, b)
  if #a ~= #b then
    return #a > #b
  end
  if a == b then
    return false
  end
  local cut = #a - 9
  if cut > 0 then
    local x, y = tonumber(string.sub(a, 1, cut)), tonumber(string.sub(b, 1, cut))
    if x ~= y then
      return x > y
    end
    return tonumber(string.sub(a, cut + 1)) > tonumber(string.sub(b, cut + 1))
  end
  return tonumber(a) > tonumber(b)
end

local function zadd_many(key, values)
  for i = 1, #values, ZADD_CHUNK do
    redis.call('ZADD', key, unpack(values, i, math.min(i + ZADD_CHUNK - 1, #values)))
  end
end

local function check_heads(count)
  local heads = {}
  for b = 0, count - 1 do
    local a = 1 + b * PER_BATCH
    local s = tonumber(ARGV[a + 1])
    local head = heads[s]
    if head == nil then
      head = tonumber(redis.call('HGET', KEYS[3 * s + 4], 'head') or '0')
    end
    if tonumber(ARGV[a + 2]) ~= head + 1 then
      return 'HEAD ' .. s .. ' ' .. int(head)
    end
    heads[s] = tonumber(ARGV[a + 3])
  end
  return nil
end

local function known()
  local ids = cmsgpack.unpack(ARGV[2])
  local found = {}
  for i = 1, #ids, ZADD_CHUNK do
    local chunk = math.min(i + ZADD_CHUNK - 1, #ids)
    local seqs = redis.call('ZMSCORE', KEYS[1], unpack(ids, i, chunk))
    for j = i, chunk do
      local seq = seqs[j - i + 1]
      if seq then
        found[#found + 1] = ids[j]
        found[#found + 1] = seq
      end
    end
  end
  return found
end

local function store(stream, index, head, first, last, created, version, codec, data)
  redis.call('XADD', stream, last .. '-0', 'f', first, 't', created, 'v', version, 'c', codec,
    'd', data)
  redis.call('ZADD', index, last, first .. ':' .. created .. ':' .. #data)
  local held = redis.call('HGET', head, 'max_version')
  if not held or dec_greater(version, held) then
    redis.call('HSET', head, 'max_version', version)
  end
  redis.call('HINCRBY', head, 'messages', int(tonumber(last) - tonumber(first) + 1))
end

local function append()
  local count = (#ARGV - 1) / PER_BATCH
  local refused = check_heads(count)
  if refused then
    return redis.error_reply(refused)
  end
  for b = 0, count - 1 do
    local a = 1 + b * PER_BATCH
    local s = tonumber(ARGV[a + 1])
    local head = KEYS[3 * s + 4]
    store(KEYS[3 * s + 2], KEYS[3 * s + 3], head, ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
      ARGV[a + 5], ARGV[a + 6], ARGV[a + 7])
    redis.call('HSET', head, 'head', ARGV[a + 3])
    if ARGV[a + 8] ~= '' then
      zadd_many(KEYS[1], cmsgpack.unpack(ARGV[a + 8]))
    end
  end
  return count
end

local function trim()
  local stream, index, head, ids = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local before = tonumber(ARGV[3])
  local found = redis.call('ZRANGE', index, '-inf', ARGV[2], 'BYSCORE', 'WITHSCORES')
  local limit, dropped, messages = nil, 0, 0
  for i = 1, #found, 2 do
    local first, created = string.match(found[i], '^(%d+):(%d+):')
    if tonumber(created) >= before then
      break
    end
    limit = tonumber(found[i + 1])
    dropped = dropped + 1
    messages = messages + limit - tonumber(first) + 1
  end
  if dropped == 0 then
    return 0
  end
  redis.call('XTRIM', stream, 'MINID', int(limit + 1) .. '-0')
  redis.call('ZREMRANGEBYSCORE', index, '-inf', int(limit))
  if ARGV[4] == '1' then
    redis.call('ZREMRANGEBYSCORE', ids, '-inf', int(limit))
  end
  redis.call('HINCRBY', head, 'messages', int(-messages))
  return dropped
end

local function repair()
  local stream, index, head = KEYS[1], KEYS[2], KEYS[3]
  local first, last = tonumber(ARGV[2]), tonumber(ARGV[3])
  -- the first batch ending at or after `first` must start after `last`
  local above = redis.call('ZRANGE', index, ARGV[2], '+inf', 'BYSCORE', 'LIMIT', 0, 1)
  if above[1] and tonumber(string.match(above[1], '^(%d+):')) <= last then
    return redis.error_reply('OVERLAP')
  end
  local later = redis.call('XRANGE', stream, int(last + 1) .. '-0', '+')
  for i = 1, #later do
    redis.call('XDEL', stream, later[i][1])
  end
  -- every remaining entry ends before `first`, so the last id may go back to just below it
  redis.call('XSETID', stream, first > 1 and int(first - 1) .. '-0' or '0-1')
  store(stream, index, head, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
  for i = 1, #later do
    redis.call('XADD', stream, later[i][1], unpack(later[i][2]))
  end
  return 1
end

if command == 'append' then
  return append()
elseif command == 'known' then
  return known()
elseif command == 'trim' then
  return trim()
elseif command == 'repair' then
  return repair()
end
return redis.error_reply('unknown journal command ' .. tostring(command))
