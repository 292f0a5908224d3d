-- The reload queue of one site (multiactive.reads.redis). Both keys carry the site's hash tag,
-- so one script call touches one slot of a cluster:
--   KEYS[1]  ma:{S}:reloads   ZSET  key -> due ms (the deadline: reload_after_s after the fill)
--   KEYS[2]  ma:{S}:reload    HASH  key -> "<first fill ms>:<mark>"
-- One entry per key: the newest mark, the first fill's time, the earliest deadline.
--
-- ARGV[1] = "put":  key, mark, filled_ms, due_ms, max_pending -> 1 queued, 0 full (a new key)
-- ARGV[1] = "done": key, mark, key, mark, ... -> how many entries were removed; an entry whose
--                   mark changed meanwhile (the key was filled again) stays for its own reload
-- ARGV[1] = "pending": limit -> {key, entry, due, key, entry, due, ...} by deadline
local op = ARGV[1]
if op == "put" then
    local key, mark, filled, due, max = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
    local held = redis.call("HGET", KEYS[2], key)
    if not held then
        if redis.call("HLEN", KEYS[2]) >= max then
            return 0
        end
        redis.call("HSET", KEYS[2], key, filled .. ":" .. mark)
        redis.call("ZADD", KEYS[1], due, key)
        return 1
    end
    local first = string.match(held, "^(%d+):")
    redis.call("HSET", KEYS[2], key, first .. ":" .. mark)
    redis.call("ZADD", KEYS[1], "LT", due, key)
    return 1
elseif op == "done" then
    local removed = 0
    for i = 2, #ARGV, 2 do
        local held = redis.call("HGET", KEYS[2], ARGV[i])
        if held and string.match(held, "^%d+:(.*)$") == ARGV[i + 1] then
            redis.call("HDEL", KEYS[2], ARGV[i])
            redis.call("ZREM", KEYS[1], ARGV[i])
            removed = removed + 1
        end
    end
    return removed
elseif op == "pending" then
    local keys = redis.call("ZRANGE", KEYS[1], 0, tonumber(ARGV[2]) - 1, "WITHSCORES")
    local out = {}
    for i = 1, #keys, 2 do
        out[#out + 1] = keys[i]
        out[#out + 1] = redis.call("HGET", KEYS[2], keys[i]) or ""
        out[#out + 1] = keys[i + 1]
    end
    return out
end
return redis.error_reply("unknown reload queue operation " .. tostring(op))
