"""`python -m logplex.admin.shards`: list the cluster's shards; add, replace or remove one, moving
the data the change displaces once every live node follows the new map; resume a move that
was interrupted (add, replace and remove also finish an interrupted one first)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from twisted.internet import defer, task

from logplex.redis.address import BadRedisURL, check_redis_url
from logplex.redis.connection import RedisClusterRefused, connect, refuse_cluster_mode
from logplex.redis.password import RedisSecrets
from logplex.redis.keys import BadNamespace, RedisKeys, check_namespace
from logplex.backlog.shardmap import (
    CONFIG, NodesBehind, ShardChangeRefused, add_shard, load, remove_shard, replace_shard, resume,
)


def _namespace(value: str) -> str:
    try:
        return check_namespace(value)
    except BadNamespace as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m logplex.admin.shards", description=__doc__)
    parser.add_argument("--config-redis", default=os.environ.get("LOGPLEX_CONFIG_REDIS_URL"),
                        help="the cluster's config Redis URL (env LOGPLEX_CONFIG_REDIS_URL)")
    parser.add_argument("--namespace", default="lp", type=_namespace,
                        help="the cluster's namespace (the nodes' --namespace; default lp)")
    parser.add_argument("--redis-password-file",
                        help="password of every Redis URL that has none (as the nodes' option)")
    parser.add_argument("--history", type=int, default=1500,
                        help="backlog length to keep when merging (the nodes' --history)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds to let nodes flush writes queued for the old map before moving data")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait for every live node to follow the new map before "
                             "giving up (the move then waits for `resume`)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the shard map")
    replace = sub.add_parser("replace", help="point a shard at another Redis, moving its data")
    replace.add_argument("name")
    replace.add_argument("url")
    add = sub.add_parser("add", help="add a shard; about 1/N of the channels move to it")
    add.add_argument("url")
    remove = sub.add_parser("remove", help="take a shard out, moving its data where the ring now puts it")
    remove.add_argument("name")
    sub.add_parser("resume", help="finish moving the data of an interrupted add, replace or remove")
    return parser


async def run(reactor, args) -> dict:
    secrets = RedisSecrets(args.redis_password_file, clock=reactor)

    def address(url: str):
        return check_redis_url(url, secrets=secrets)

    config_address = address(args.config_redis)
    keys = RedisKeys(args.namespace, config_address.db)
    config = connect(config_address, poolsize=1, reactor=reactor)
    pools = {}

    def connect_url(url: str):
        if url == CONFIG:
            return config
        if url not in pools:
            pools[url] = connect(address(url), poolsize=1, reactor=reactor)
        return pools[url]

    try:
        if args.command in ("replace", "add"):
            # A shard may not be a Redis Cluster node: refuse before moving anything.
            await refuse_cluster_mode(connect_url(args.url), address(args.url), 10.0, reactor)
        if args.command == "list":
            return await load(config, keys)
        options = dict(keys=keys, history=args.history, settle=args.settle, wait=args.wait, reactor=reactor)
        if args.command == "resume":
            return {"resumed": await resume(config, connect_url, **options)}
        if args.command == "replace":
            return await replace_shard(config, connect_url, args.name, args.url, **options)
        if args.command == "remove":
            return await remove_shard(config, connect_url, args.name, **options)
        return await add_shard(config, connect_url, args.url, **options)
    finally:
        for pool in [config, *pools.values()]:
            await pool.disconnect()


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    if not args.config_redis:
        sys.exit("logplex shards: give --config-redis (or LOGPLEX_CONFIG_REDIS_URL).")

    async def go(reactor):
        try:
            result = await run(reactor, args)
        except (KeyError, ValueError, ConnectionError, BadRedisURL, RedisClusterRefused, NodesBehind,
                ShardChangeRefused) as e:
            sys.stderr.write(f"logplex shards: {e}\n")
            raise SystemExit(1)
        print(json.dumps(result, indent=2, sort_keys=True))

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    main()
