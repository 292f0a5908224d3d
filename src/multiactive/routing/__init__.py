"""Traffic: which site serves a user (policy, pure), policy changes as replicated messages,
the live router, and configuration exported for the real edge (nginx, BIND).

    hashing.py   routing key -> bucket, as nginx's split_clients computes it
    config.py    the topology's [routing] section
    policy.py    the policy: region, unit, home site, stand-ins; shift / drain / set-mode
    messages.py  changes as `ma.route.policy` messages applied into every site's state
"""
