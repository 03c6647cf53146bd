"""The Lua scripts of the concurrency store (``rolegate_gateway.slots``) and its key names.

Owns the three scripts, each run atomically by the store with EVALSHA: ``ACQUIRE`` (drop
expired leases, admit while fewer than ``maxAsync`` remain), ``RELEASE`` (remove a lease,
publish on the role's channel while a replica waits) and ``RENEW`` (extend, or re-add, the
leases of running calls). Times are milliseconds of the store's clock (``TIME``). Every
script first reads the store's epoch (:data:`EPOCH_KEY`) and sets a new one when there is
none (a new, restarted or flushed store), saying so in its answer.

Reference: https://redis.io/docs/latest/develop/interact/programmability/eval-intro/ (TIME
and writes in one script: effects replication, the default since Redis 5),
https://redis.io/docs/latest/commands/zadd/, https://redis.io/docs/latest/commands/publish/.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACQUIRE", "CHANNEL_SUFFIX", "EPOCH_KEY", "PREFIX", "RELEASE", "RENEW"]


# The store's epoch (KEYS[n] 'rolegate:slots:epoch', no expiry): a store that restarted
# empty or was flushed has none; the first script to notice sets a new one (ARGV[n]) and
# says so, and every replica that sees the epoch change re-registers its running calls.
def _epoch(key: int, arg: int) -> str:
    """The scripts' prologue: ``epoch`` from KEYS[key], set to ARGV[arg] when missing
    (``created`` = 1)."""
    return f"""
local epoch = redis.call('GET', KEYS[{key}])
local created = 0
if not epoch then
  epoch = ARGV[{arg}]
  redis.call('SET', KEYS[{key}], epoch)
  created = 1
end
"""


# KEYS: the role's set, its "someone waits" flag, the epoch; ARGV: maxAsync, ttl ms, slot
# id, flag ms, a new epoch. -> {1, held, epoch, 0} admitted; {0, ms until the oldest lease
# expires, epoch, created} denied (and the flag set, so releases publish; always denied
# when the epoch was just created). Idempotent: a retry after a lost answer finds its lease.
ACQUIRE: Final = (
    _epoch(3, 5)
    + """
if created == 1 then
  return {0, 0, epoch, 1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return {1, held, epoch, 0}
end
if held < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], 2 * ttl)
  return {1, held + 1, epoch, 0}
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) - now, epoch, 0}
"""
)

# KEYS[1] the role's set, KEYS[2] its "someone waits" flag; ARGV: slot id, channel.
# -> 1 removed, 0 not there (expired). Publishes only while a replica was denied lately.
RELEASE: Final = """
local n = redis.call('ZREM', KEYS[1], ARGV[1])
if n == 1 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
return n
"""

# KEYS: the role's set, the epoch; ARGV: a new epoch, ttl ms, slot ids...
# -> {how many were missing (re-added), epoch, created, leases held now (all replicas')}.
RENEW: Final = (
    _epoch(2, 1)
    + """
local t = redis.call('TIME')
local ttl = tonumber(ARGV[2])
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl
local added = 0
for i = 3, #ARGV do
  added = added + redis.call('ZADD', KEYS[1], expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
return {added, epoch, created, redis.call('ZCARD', KEYS[1])}
"""
)

#: Keys and channels: ``<PREFIX><role>`` (the set), ``<PREFIX><role>:waiting`` (the flag),
#: ``<PREFIX><role><CHANNEL_SUFFIX>`` (the release channel).
PREFIX: Final = "rolegate:slots:"
CHANNEL_SUFFIX: Final = ":free"
EPOCH_KEY: Final = "rolegate:slots:epoch"
