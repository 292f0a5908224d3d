--[[
multiactive state on Redis: one step of built-in operations, atomic with its watermark (P3).

The semantics are those of multiactive/state/ops.py; the key layout is documented in one place,
multiactive/redisdb.py. A step is one stream, so one partition: every key it touches carries
the hash tag {<site>:<partition>} and the call stays inside one slot of a Redis Cluster.
Versions are int64 decimal strings (Lua numbers are doubles): they are compared as decimals,
and origins byte by byte (never with `<` on strings, which follows the server's locale).

    EVALSHA sha numkeys KEYS... ARGV...

KEYS[1]   watermarks of the step's (site, partition)           ma:{S:P}:wm
KEYS[2]   dead letters of that (site, partition)               ma:{S:P}:dead
KEYS[3..] per operation, in order:
            kv.set, kv.del,     its register                   ma:{S:P}:kv:<key>     HASH
            kv.fill (a cache-aside fill, origin '', see state/ops.py)
            counter.add         its counter                    ma:{S:P}:c:<key>      STRING
            zset.add, zset.rem  the set's present members,     ma:{S:P}:z:<key>      ZSET
                                then its member registers      ma:{S:P}:zm:<key>     HASH
ARGV[1]   origin of the stream whose watermark moves ('' moves none: a handler's `put`)
ARGV[2]   the new watermark (through seq)
ARGV[3]   how many messages the step covers (added to the stream's count)
ARGV[4]   the watermark this process expects the stream to have before the step
ARGV[5]   msgpack array of operations {type, version, origin, payload} ('' for none);
          payload is the value, the delta as a canonical decimal, or the member
ARGV[6]   msgpack array of dead letters, flat: field, letter, field, letter... ('' for none)

The order of work makes a failure harmless:
1. refuse before any write unless the watermark advances ("WATERMARK <applied>") from the
   one this process expects ("LOST <applied>": the server lost commits, or another process
   commits for this site);
2. registers (kv, set members): last-writer-wins by (version, origin), so applying them again
   after a failure later in the script changes nothing;
3. counters (INCRBY, not idempotent): if one fails (int64 overflow), this step's increments
   are undone and the script fails ("COUNTER <key>: <error>") without moving the watermark;
4. dead letters, then the watermark.
Returns how many register writes won.
]]

local LOGICAL_BITS_DIVISOR = 65536 -- a version is ms << 16 | logical
local HSET_CHUNK = 2000

local function int(n)
  return string.format('%d', n)
end

-- -1, 0 or 1 for decimal strings of non-negative integers of any size
local function cmp_dec(a, b)
  if #a ~= #b then
    return #a < #b and -1 or 1
  end
  if a == b then
    return 0
  end
  local cut = #a - 9
  if cut > 0 then
    local x, y = tonumber(string.sub(a, 1, cut)), tonumber(string.sub(b, 1, cut))
    if x ~= y then
      return x < y and -1 or 1
    end
    a, b = string.sub(a, cut + 1), string.sub(b, cut + 1)
  end
  return tonumber(a) < tonumber(b) and -1 or 1
end

-- -1, 0 or 1 comparing bytes, as Python compares str of ASCII and bytes
local function cmp_bytes(a, b)
  if a == b then
    return 0
  end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y and -1 or 1
    end
  end
  return #a < #b and -1 or 1
end

-- last-writer-wins: does (version, origin) beat what a register holds?
local function newer(version, origin, held_version, held_origin)
  local c = cmp_dec(version, held_version)
  if c ~= 0 then
    return c > 0
  end
  return cmp_bytes(origin, held_origin) > 0
end

-- version >> 16, exactly: split the decimal so that every product stays below 2^53
-- (1e9 = 65536 * 15258 + 51712)
local function score_ms(version)
  if #version <= 15 then
    return math.floor(tonumber(version) / LOGICAL_BITS_DIVISOR)
  end
  local hi, lo = tonumber(string.sub(version, 1, -10)), tonumber(string.sub(version, -9))
  return hi * 15258 + math.floor((hi * 51712 + lo) / LOGICAL_BITS_DIVISOR)
end

local function set_register(key, present, version, origin, value)
  local held = redis.call('HMGET', key, 'version', 'origin')
  if held[1] and not newer(version, origin, held[1], held[2]) then
    return 0
  end
  if present then
    redis.call('HSET', key, 'version', version, 'origin', origin, 'value', value)
  else
    redis.call('HSET', key, 'version', version, 'origin', origin)
    if held[1] then
      redis.call('HDEL', key, 'value')
    end
  end
  return 1
end

-- a cache-aside fill (origin ''): over nothing, an older entry or a fill of its version
-- (a reload); never over a message-driven entry of its version or anything newer
local function fill_register(key, version, value)
  local held = redis.call('HMGET', key, 'version', 'origin')
  if held[1] then
    local c = cmp_dec(version, held[1])
    if c < 0 or (c == 0 and held[2] ~= '') then
      return 0
    end
  end
  redis.call('HSET', key, 'version', version, 'origin', '', 'value', value)
  return 1
end

local function set_member(zkey, mkey, present, version, origin, member)
  local held = redis.call('HGET', mkey, member)
  if held then
    local held_version, held_origin = string.match(held, '^(%d+):(.*):[01]$')
    if not newer(version, origin, held_version, held_origin) then
      return 0
    end
  end
  redis.call('HSET', mkey, member, version .. ':' .. origin .. ':' .. (present and '1' or '0'))
  if present then
    redis.call('ZADD', zkey, int(score_ms(version)), member)
  elseif held then
    redis.call('ZREM', zkey, member)
  end
  return 1
end

local function check_watermark()
  if ARGV[1] == '' then
    return nil
  end
  local held = redis.call('HGET', KEYS[1], 'applied:' .. ARGV[1]) or '0'
  if tonumber(ARGV[2]) <= tonumber(held) then
    return 'WATERMARK ' .. held
  end
  if held ~= ARGV[4] then
    return 'LOST ' .. held
  end
  return nil
end

-- registers first; counters are collected as {key, delta} for step 3
local function apply_registers(ops, counters)
  local won, k = 0, 3
  for i = 1, #ops do
    local op = ops[i]
    local kind = op[1]
    if kind == 'kv.set' or kind == 'kv.del' then
      won = won + set_register(KEYS[k], kind == 'kv.set', op[2], op[3], op[4])
      k = k + 1
    elseif kind == 'kv.fill' then
      won = won + fill_register(KEYS[k], op[2], op[4])
      k = k + 1
    elseif kind == 'counter.add' then
      counters[#counters + 1] = { KEYS[k], op[4] }
      k = k + 1
    else
      won = won + set_member(KEYS[k], KEYS[k + 1], kind == 'zset.add', op[2], op[3], op[4])
      k = k + 2
    end
  end
  return won
end

local function apply_counters(counters)
  for i = 1, #counters do
    local done = redis.pcall('INCRBY', counters[i][1], counters[i][2])
    if type(done) == 'table' and done.err then
      for j = i - 1, 1, -1 do
        redis.call('DECRBY', counters[j][1], counters[j][2])
      end
      return 'COUNTER ' .. counters[i][1] .. ': ' .. done.err
    end
  end
  return nil
end

local function park(letters)
  for i = 1, #letters, HSET_CHUNK do
    redis.call('HSET', KEYS[2], unpack(letters, i, math.min(i + HSET_CHUNK - 1, #letters)))
  end
end

local refused = check_watermark()
if refused then
  return redis.error_reply(refused)
end
local counters = {}
local won = 0
if ARGV[5] ~= '' then
  won = apply_registers(cmsgpack.unpack(ARGV[5]), counters)
end
local failed = apply_counters(counters)
if failed then
  return redis.error_reply(failed)
end
if ARGV[6] ~= '' then
  park(cmsgpack.unpack(ARGV[6]))
end
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'applied:' .. ARGV[1], ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'count:' .. ARGV[1], ARGV[3])
end
return won
