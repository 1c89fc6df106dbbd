"""The cases of bench/soak.py (bench/SOAK.md says what each does and checks).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import drains as bench_drains  # noqa: E402  (bench/drains.py: frame_format, sender, revision)
from soak_traffic import PAD, TS, Check, api, message, metrics, runs, seqs  # noqa: E402
from soak_world import Node, World, backlog, drain_metrics, finish, lost, resp  # noqa: E402


# == the cases ====================================================================================================
def scaled(args, seconds: float) -> float:
    return seconds / 6 if args.quick else seconds


def case_shard(args) -> dict:
    """The shard Redis SIGKILLed for 10 s and started again empty, under load, with a bulk flood
    on a second channel of the same shard so that the writer's queue (200,000 lines) overflows."""
    w = World("shard", args)
    check = Check()
    try:
        status, doc, _ = api(w.node, "PUT", "/v3/channels/bulk", {"tokens": ["app"]})
        bulk_token = doc["tokens"]["app"].encode()
        w.start_load()
        before = metrics(w.node)
        rss_before = w.node.rss()
        pid = w.node.proc.pid
        w.run_for(scaled(args, 20) - 1)
        # The flood: drains.py's generator (MSG "t=<time> s=NNN:<seq>"), from 1 s before the kill to the restart.
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        fmt = bench_drains.frame_format(bulk_token, 0, 200)
        frame_len = len(fmt % (b"%.6f" % time.time(), 0))
        flood_s = scaled(args, args.outage) + 1
        flood = ctx.Process(target=bench_drains.sender, daemon=True, args=(
            w.node.syslog_port, fmt, frame_len, flood_s, args.bulk_rate, ready, go, results, 0))
        flood.start()
        ready.acquire(timeout=30)
        go.set()
        w.event(f"bulk flood on: {args.bulk_rate:g} msg/s for {flood_s:g} s to channel bulk")
        time.sleep(1)
        w.shard.kill()
        killed_at = time.time()
        w.event("shard Redis SIGKILLed")
        time.sleep(0.3)  # a flush answered just before the kill is counted by now; none can succeed after
        at_kill = metrics(w.node)
        probe = {}

        def during():
            if "backlog_status" not in probe:
                probe["backlog_status"], _, probe["backlog_s"] = api(w.node, "GET", "/v3/channels/soak/logs?num=10")
            probe.setdefault("healthy", []).append(api(w.node, "GET", "/healthcheck")[0])

        w.run_for(scaled(args, args.outage), during=during)
        w.shard.start()
        restarted_at = time.time()
        w.event("shard Redis started again, empty")
        _, flood_sent, flood_error = results.get(timeout=60)
        flood.join(10)
        w.event(f"bulk flood off: {flood_sent} sent")
        w.run_for(scaled(args, 20))
        w.stop_load()
        expected = w.expected()
        w.settle(expected)
        # The writer is done once written + dropped + superseded == routed.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            t = drain_metrics({}, metrics(w.node))
            if t["backlog_written_total"] + t["backlog_dropped_total"] + t["backlog_superseded_total"] \
                    >= t["messages_routed_total"]:
                break
            time.sleep(0.5)
        after = metrics(w.node)
        rx = w.receivers(expected)
        # The backlogs on the new (empty) shard. Per sender, what is missing must be a prefix, as the
        # writer keeps order and sheds the oldest first: the lines the killed Redis had acknowledged
        # (they went with it: logplex_backlog_written_total at the kill) and the lines the writer
        # dropped while the shard was down (its queue holds 200,000 lines per shard:
        # logplex_backlog_dropped_total). Nothing after that prefix may be missing.
        stored = backlog(w.shard, "soak")
        bulk = backlog(w.shard, "bulk").get("000", set())
        sent_at = {"h": w.http.acked_at, "t": w.tcp.written_at}
        missing, holes, last_missing = {}, {}, {}
        for sid, have in [("h", stored.get("h", set())), ("t", stored.get("t", set())), ("bulk", bulk)]:
            want = expected[sid] if sid in expected else set(range(flood_sent))
            first = min(have) if have else max(want, default=-1) + 1
            prefix = [x for x in want if x < first]
            missing[sid] = len(prefix)
            holes[sid] = runs(sorted(x for x in want if x >= first and x not in have))
            if sid in sent_at and prefix:
                last_missing[sid] = round(sent_at[sid][max(prefix)] - restarted_at, 2)
        hole_count = sum(b - a + 1 for r in holes.values() for a, b in r)
        d = drain_metrics(before, after)
        total = drain_metrics({}, after)  # a fresh node: its counters from zero
        written_at_kill = int(at_kill.get("logplex_backlog_written_total", 0))
        written_since_kill = total["backlog_written_total"] - written_at_kill
        dropped = total["backlog_dropped_total"]
        llen = sum(len(v) for v in stored.values()) + len(bulk)  # stored[""]: lines without a number
        check("node stayed up (same process)", w.node.alive() and w.node.proc.pid == pid, True, w.node.alive())
        check("healthcheck 200 during the outage", set(probe.get("healthy", [])) == {200}, [200],
              sorted(set(probe.get("healthy", []))))
        check("drain lost nothing", lost(rx, "sink") == 0, 0, lost(rx, "sink"))
        check("tail lost nothing", lost(rx, "tail") == 0, 0, lost(rx, "tail"))
        check("backlog: missing lines == written to the killed Redis + dropped (metrics)",
              sum(missing.values()) == written_at_kill + dropped, f"{written_at_kill} + {dropped}",
              sum(missing.values()), "exact, over channels soak and bulk")
        check("backlog: nothing missing after the missing prefix", hole_count == 0, 0, hole_count)
        check("backlog: the gap ends within the outage (last missing line sent before the restart)",
              all(v <= 0 for v in last_missing.values()), "<= 0 s after the restart", last_missing)
        check("backlog: LLEN == lines written since the kill", llen == written_since_kill, written_since_kill, llen)
        check("routed == written + dropped + superseded (the node's counters from its start)",
              total["messages_routed_total"] == total["backlog_written_total"] + dropped
              + total["backlog_superseded_total"], total["messages_routed_total"],
              total["backlog_written_total"] + dropped + total["backlog_superseded_total"])
        return finish(w, check, {
            "load": f"{args.rate:g} msg/s + bulk {args.bulk_rate:g} msg/s x {flood_s:g} s",
            "outage_s": round(restarted_at - killed_at, 1), "flood_sent": flood_sent, "flood_error": flood_error,
            "backlog_read_during_outage": [probe.get("backlog_status"), round(probe.get("backlog_s", 0), 2)],
            "backlog_missing_prefix": missing, "backlog_holes": holes,
            "last_missing_line_sent_s_after_restart": last_missing, "backlog_llen": llen,
            "written_at_kill": written_at_kill, "written_since_kill": written_since_kill,
            "summary": {"bulk sent": flood_sent, "missing prefix": missing, "written to the killed Redis": written_at_kill,
                        "dropped (metric)": dropped, "holes after the prefix": hole_count,
                        "last missing line sent s after the restart": last_missing, "LLEN after": llen,
                        "backlog read during outage": [probe.get("backlog_status"), round(probe.get("backlog_s", 0), 2)]},
            "metrics": d, "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
        }, lost_cell=f"drain {lost(rx, 'sink')}, tail {lost(rx, 'tail')}; backlog missing {sum(missing.values())} "
                     f"= {written_at_kill} with the killed Redis + {dropped} dropped (metric), 0 else")
    finally:
        w.close()


def case_config(args) -> dict:
    """The config Redis SIGKILLed for 10 s (after a SAVE: a real one persists) and started again."""
    w = World("config", args)
    check = Check()
    try:
        w.start_load()
        before, rss_before, pid = metrics(w.node), w.node.rss(), w.node.proc.pid
        w.run_for(scaled(args, 20))
        resp(w.cfg.port, "SAVE")
        w.cfg.kill()
        killed_at = time.time()
        w.event("config Redis SIGKILLed (after SAVE)")
        at_kill = {"sink": (w.sink_stats() or {}).get("unique", {}), "tail": dict(w.tail.unique)}
        writes, reads = [], []

        def during():
            status, doc, took = api(w.node, "PUT", f"/v3/channels/during-{len(writes)}", {"tokens": ["app"]})
            writes.append((status, round(took, 2), doc.get("error") if isinstance(doc, dict) else doc))
            status, doc, took = api(w.node, "GET", "/v3/channels/soak")
            reads.append((status, round(took, 2)))

        w.run_for(scaled(args, args.outage), during=during)
        at_restart = {"sink": (w.sink_stats() or {}).get("unique", {}), "tail": dict(w.tail.unique)}
        w.cfg.start()
        restarted_at = time.time()
        w.event("config Redis started again (loads its dump)")
        back = None
        while time.time() - restarted_at < 60:
            status, doc, _ = api(w.node, "PUT", "/v3/channels/after", {"tokens": ["late"]})
            if status == 201:
                back = round(time.time() - restarted_at, 1)
                break
            time.sleep(0.25)
        w.event(f"API writes answer again after {back} s")
        # The change feed is back: a token made now routes on this node.
        late_token = doc["tokens"]["late"] if back is not None else None
        routed_new = None
        if late_token:
            began = time.time()
            while time.time() - began < 15 and not routed_new:
                body = b"%d %s\n" % (len(message(late_token, "z", 0, "0")) + 1, message(late_token, "z", 0, "0"))
                req = urllib.request.Request(f"http://127.0.0.1:{w.node.logs_port}/logs", data=body, method="POST",
                                             headers={"Authorization": "Basic " + base64.b64encode(
                                                 b"token:" + late_token.encode()).decode(),
                                                 "Content-Type": "application/logplex-1"})
                try:
                    urllib.request.urlopen(req, timeout=10).read()
                    routed_new = round(time.time() - began, 2)
                except urllib.error.HTTPError:
                    time.sleep(0.25)
        w.run_for(scaled(args, 20))
        w.stop_load()
        expected = w.expected()
        w.settle(expected)
        after = metrics(w.node)
        rx = w.receivers(expected)
        d = drain_metrics(before, after)
        moved = {k: {sid: at_restart[k].get(sid, 0) - at_kill[k].get(sid, 0) for sid in ("h", "t")}
                 for k in ("sink", "tail")}
        statuses = Counter(s for s, _, _ in writes)
        check("node stayed up (same process)", w.node.alive() and w.node.proc.pid == pid, True, w.node.alive())
        check("API writes answer 503 during the outage", set(statuses) == {503}, {503: len(writes)}, dict(statuses))
        check("API writes answer within 6 s (--redis-timeout 5 + 1)", max(t for _, t, _ in writes) <= 6.0, "<= 6",
              max(t for _, t, _ in writes))
        check("API reads answer 200 from the cache", {s for s, _ in reads} == {200}, [200], sorted({s for s, _ in reads}))
        check("routing went on: the drain and the tail received during the outage",
              all(v > 0 for k in moved.values() for v in k.values()), "> 0 each", moved)
        check("writes came back by themselves", back is not None, "a 201", back)
        check("a token made after the restart routes", routed_new is not None, "204", routed_new)
        for receiver in ("sink", "tail", "backlog"):
            check(f"{receiver} lost nothing", lost(rx, receiver) == 0, 0, lost(rx, receiver))
        return finish(w, check, {
            "load": f"{args.rate:g} msg/s", "outage_s": round(restarted_at - killed_at, 1),
            "writes_during": writes, "reads_during": reads, "writes_back_after_s": back,
            "new_token_routed_after_s": routed_new, "received_during_outage": moved,
            "summary": {"API writes during": dict(statuses), "write answer s max": max(t for _, t, _ in writes),
                        "writes back after s": back, "received by drain/tail during outage": moved},
            "metrics": d, "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
        }, lost_cell=f"drain {lost(rx, 'sink')}, tail {lost(rx, 'tail')}, backlog {lost(rx, 'backlog')}")
    finally:
        w.close()


def case_drain(args) -> dict:
    """The drain's receiver answers 500 for 60 s, then hangs for 30 s, then answers one request a second."""
    w = World("drain", args)
    check = Check()
    try:
        w.start_load()
        before, rss_before = metrics(w.node), w.node.rss()
        w.run_for(scaled(args, 10))
        phases = []
        for mode, seconds in (("error", args.error_s), ("hang", args.hang_s), ("slow", args.slow_s)):
            w.sink_mode(mode)
            began = time.time()
            w.run_for(scaled(args, seconds))
            phases.append({"mode": mode, "s": round(time.time() - began, 1),
                           "spool_bytes_end": w.spool_bytes(), "state": w.drain_state()})
        w.stop_load()
        w.sink_mode("ok")
        slow_end = time.time() - w.t0
        expected = w.expected()
        w.settle(expected, quiet=60, limit=600)
        after = metrics(w.node)
        rx = w.receivers(expected)
        d = drain_metrics(before, after)
        spool_max = max(s["spool_bytes"] for s in w.samples)
        bound = args.spool_bytes
        emptied = next((round(s["t"] - slow_end, 1) for s in w.samples if s["t"] > slow_end and s["spool_bytes"] == 0),
                       None)
        rss_max = max(s["rss_mib"] or 0 for s in w.samples)
        check("drain lost nothing within the spool bound", lost(rx, "sink") == 0, 0, lost(rx, "sink"))
        check("spool stayed within --drain-spool-bytes", 0 < spool_max <= bound, f"<= {bound}", spool_max)
        check("no L10, nothing dropped", d["drain_dropped_total"] == 0 and rx["sink_l10_lines"] == 0, 0,
              [d["drain_dropped_total"], rx["sink_l10_lines"]])
        check("tail lost nothing", lost(rx, "tail") == 0, 0, lost(rx, "tail"))
        check("backlog lost nothing", lost(rx, "backlog") == 0, 0, lost(rx, "backlog"))
        return finish(w, check, {
            "load": f"{args.rate:g} msg/s for {round(w.load_stopped - w.load_started)} s",
            "phases": phases, "spool_bytes_max": spool_max, "spool_bound": bound,
            "node_rss_max_mib": rss_max, "spool_empty_s_after_slow": emptied,
            "summary": {"sink answers by mode": rx["sink_answers"], "node retried": d["drain_retried_total"],
                        "duplicates at sink": rx["sink_duplicates"], "spool max MiB": round(spool_max / 1048576, 1),
                        "spool empty s after the slow phase": emptied, "node RSS max MiB": rss_max},
            "metrics": d, "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
        }, lost_cell=f"drain {lost(rx, 'sink')}, tail {lost(rx, 'tail')}, backlog {lost(rx, 'backlog')}; "
                     f"spool max {spool_max / 1048576:.1f} MiB of {bound / 1048576:.0f}")
    finally:
        w.close()


def restart_case(args, sig: int) -> dict:
    """SIGTERM or SIGKILL the node under load, --cycles times, with the drain failing (500) from 5 s
    before each signal, so that it holds messages in memory and in its spool; the node is started
    again at once with the same --node-name, and the receiver answers again 5 s later."""
    name = "sigterm" if sig == signal.SIGTERM else "sigkill"
    w = World(name, args)
    check = Check()
    try:
        w.start_load()
        before, rss_before = metrics(w.node), w.node.rss()
        cycles = []
        for _ in range(args.cycles):
            w.run_for(scaled(args, 15))
            w.sink_mode("error")
            w.run_for(scaled(args, 5))
            cycle = {"metrics_until_signal": drain_metrics(before if not cycles else {}, metrics(w.node)),
                     "drain_state_at_signal": w.drain_state(), "spool_bytes_at_signal": w.spool_bytes()}
            cycle["at"] = time.time()
            cycle["exit_code"], took = w.node.signal(sig)
            cycle["stop_s"] = round(took, 2)
            cycle["spool_bytes_after_stop"] = w.spool_bytes()
            w.event(f"node {name}: exit {cycle['exit_code']} after {took:.2f} s; "
                    f"spool {cycle['spool_bytes_at_signal']} -> {cycle['spool_bytes_after_stop']} bytes")
            cycle["restart_s"] = round(w.node.start(), 1)
            w.event(f"node started again in {cycle['restart_s']} s")
            w.run_for(scaled(args, 5))
            w.sink_mode("ok")
            cycles.append(cycle)
        w.run_for(scaled(args, 15))
        w.stop_load()
        expected = w.expected()
        w.settle(expected, quiet=45, tail=False)
        after = metrics(w.node)
        rx = w.receivers(expected)
        # The HTTP sender's acknowledged messages are the contract; TCP has no acknowledgement, so a
        # written t line that never reached the router (the node's socket buffer at a kill) is the
        # protocol's loss, not the drain's. Each missing line is put down to the signal nearest to
        # when it was acknowledged (h) or written (t); its age is how long before that signal
        # (negative: while the node was stopping).
        stored = backlog(w.shard, "soak")
        when = {"h": w.http.acked_at, "t": w.tcp.written_at}
        sink_missing = {sid: sorted(expected[sid] - sink_seqs(w, sid)) for sid in ("h", "t")}
        backlog_missing = {sid: sorted(expected[sid] - stored.get(sid, set())) for sid in ("h", "t")}
        for cycle in cycles:
            for sid in ("h", "t"):
                cycle[f"{sid}_drain_lost"], cycle[f"{sid}_backlog_lost"] = [], []
        for where, missing in (("drain", sink_missing), ("backlog", backlog_missing)):
            for sid, xs in missing.items():
                for x in xs:
                    cycle = min(cycles, key=lambda c: abs(c["at"] - when[sid][x]))
                    cycle[f"{sid}_{where}_lost"].append(round(cycle["at"] - when[sid][x], 3))
        for cycle in cycles:
            for key in ("h_drain_lost", "h_backlog_lost", "t_drain_lost", "t_backlog_lost"):
                ages = cycle.pop(key)
                cycle[key] = len(ages)
                cycle[key + "_s_before_signal"] = [min(ages), max(ages)] if ages else None
            # Lost from the drain's memory: acknowledged h lines, and t lines the router had (those
            # in the backlog, which misses at most a flush interval of them).
            cycle["drain_memory_lost"] = cycle["h_drain_lost"] + max(0, cycle["t_drain_lost"] - cycle["t_backlog_lost"])
            cycle["at"] = round(cycle["at"] - w.t0, 1)
        # One batch: --http-drain-target-bytes of output lines ("<134>1 TS host app h - MSG").
        buffer, target = args.drain_buffer, 100 * 1024
        batch = target // (len(message("app", "h", 0, "%.6f" % time.time())) - 2) + 1
        spooled = any(c["spool_bytes_after_stop"] > 0 for c in cycles)
        resumed = w.node.log().count("drain_spool_resumed")
        result = {
            "load": f"{args.rate:g} msg/s, {args.cycles} x {name}", "cycles": cycles,
            "acked_lost_at_drain": len(sink_missing["h"]), "acked_lost_in_backlog": len(backlog_missing["h"]),
            "drain_lost_runs": {sid: runs(v)[:10] for sid, v in sink_missing.items()},
            "backlog_lost_runs": {sid: runs(v)[:10] for sid, v in backlog_missing.items()},
            "metrics_last_run": drain_metrics({}, after), "spool_resumed_logged": resumed,
            "sender_h_retries": dict(w.http.retries), "sender_t_errors": dict(w.tcp.errors),
            "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
            "summary": {"stop s": [c["stop_s"] for c in cycles], "restart s": [c["restart_s"] for c in cycles],
                        "spool bytes at signal -> after stop": [(c["spool_bytes_at_signal"], c["spool_bytes_after_stop"])
                                                                for c in cycles],
                        "drain lost (h) acked s before signal": [c["h_drain_lost_s_before_signal"] for c in cycles],
                        "sink duplicates": rx["sink_duplicates"], "spool resumes logged": resumed},
        }
        per_cycle = [c["h_drain_lost"] for c in cycles]
        per_cycle_backlog = [c["h_backlog_lost"] for c in cycles]
        if sig == signal.SIGTERM:
            check("clean exits", all(c["exit_code"] in (0, -signal.SIGTERM) for c in cycles), "0 or -15",
                  [c["exit_code"] for c in cycles])
            check("every acknowledged message reached the drain", not sink_missing["h"], 0, per_cycle,
                  "per signal; acked s before it: " + str([c["h_drain_lost_s_before_signal"] for c in cycles]))
            check("every acknowledged message is in the backlog", not backlog_missing["h"], 0, per_cycle_backlog)
            cell = (f"acked lost: drain {per_cycle}, backlog {per_cycle_backlog} (per signal); "
                    f"TCP written, not delivered {[c['t_drain_lost'] for c in cycles]}")
        else:
            flush = 0.05
            memory = [c["drain_memory_lost"] for c in cycles]
            check(f"drain lost per kill <= --drain-buffer + one batch ({buffer} + {batch})",
                  max(memory) <= buffer + batch, f"<= {buffer + batch}", memory,
                  "README: what it held in memory for its drains; h acked + t routed")
            ages = [c["h_backlog_lost_s_before_signal"] for c in cycles if c["h_backlog_lost"]]
            worst = max((a[1] for a in ages), default=0.0)
            check("backlog lost only lines acknowledged within 2 flush intervals of a kill",
                  worst <= 2 * flush + 0.05, f"<= {2 * flush + 0.05:.2f} s", worst)
            cell = (f"drain lost per kill {memory} (h acked {per_cycle}; bound {buffer + batch}), backlog acked lost "
                    f"{per_cycle_backlog} (acked <= {worst} s before the kill); TCP written, not routed "
                    f"{[c['t_backlog_lost'] for c in cycles]}")
        check("spools left behind were delivered by the restarted node", w.spool_bytes() == 0
              and (resumed > 0 or not spooled), "empty; resumed when spooled",
              [w.spool_bytes(), f"spooled at a stop: {spooled}", f"resumed: {resumed}"])
        return finish(w, check, result, lost_cell=cell)
    finally:
        w.close()


def sink_seqs(w: World, sid: str) -> set[int]:
    bitmap = (w.sink_stats(full=True) or {}).get("bitmaps", {}).get(sid)
    return seqs(zlib.decompress(base64.b64decode(bitmap))) if bitmap else set()


def case_partial(args) -> dict:
    """Senders that disconnect mid-frame, cut at three places, while the load goes on."""
    w = World("partial", args)
    check = Check()
    try:
        w.start_load()
        before, rss_before = metrics(w.node), w.node.rss()
        w.run_for(scaled(args, 10))
        per_kind = args.partial_senders
        complete = 5
        seq = 0
        kinds = {}
        for kind in ("in the count", "after the count's SP", "in the body"):
            m0 = metrics(w.node).get("logplex_partial_frames_dropped_total", 0)
            for _ in range(per_kind):
                frames = b""
                for _ in range(complete):
                    m = message(w.token, "p", seq, "%.6f" % time.time())
                    frames += b"%d %s" % (len(m), m)
                    seq += 1
                cut = f"<134>1 {TS} host {w.token} p - - PARTIAL frame {PAD}".encode()  # no s= marker
                whole = b"%d %s" % (len(cut), cut)
                tail = {"in the count": whole[:2], "after the count's SP": whole[:whole.index(b" ") + 1],
                        "in the body": whole[:len(whole) // 2]}[kind]
                with socket.create_connection(("127.0.0.1", w.node.syslog_port), timeout=10) as s:
                    s.sendall(frames + tail)
                    s.shutdown(socket.SHUT_WR)
            time.sleep(2)
            counted = int(metrics(w.node).get("logplex_partial_frames_dropped_total", 0) - m0)
            kinds[kind] = {"senders": per_kind, "counted": counted}
            w.event(f"{per_kind} senders left {kind}: {counted} counted")
        w.run_for(scaled(args, 10))
        w.stop_load()
        expected = w.expected()
        expected["p"] = set(range(seq))
        w.settle(expected)
        after = metrics(w.node)
        rx = w.receivers(expected)
        leaked = {"sink": (w.sink_stats() or {}).get("unmarked", 0), "tail": w.tail.partial_lines,
                  "backlog": len(backlog(w.shard, "soak")[""])}
        d = drain_metrics(before, after)
        framing = int(after.get("logplex_framing_errors_total", 0) - before.get("logplex_framing_errors_total", 0))
        for kind, v in kinds.items():
            check(f"partial frames {kind}: discarded and counted", v["counted"] == v["senders"], v["senders"],
                  v["counted"])
        check("no partial frame reached a receiver", not any(leaked.values()), 0, leaked)
        check("no framing error", framing == 0, 0, framing)
        for receiver in ("sink", "tail", "backlog"):
            check(f"{receiver} lost nothing (load and the senders' whole frames)", lost(rx, receiver) == 0, 0,
                  lost(rx, receiver))
        return finish(w, check, {
            "load": f"{args.rate:g} msg/s + {3 * per_kind} senders leaving mid-frame", "kinds": kinds,
            "metrics": d, "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
        }, lost_cell=f"drain {lost(rx, 'sink')}, tail {lost(rx, 'tail')}, backlog {lost(rx, 'backlog')}; counted "
                     + ", ".join(f"{v['counted']}/{v['senders']}" for v in kinds.values()))
    finally:
        w.close()


def case_departed_node(args) -> dict:
    """Two nodes; the drain fails (500) while node soak spools; soak is SIGKILLed and never started
    again (autoscaling, a lost VM); the receiver recovers. Node peer must adopt soak's spool after
    --spool-adopt-after and deliver it, in order, once; then soak comes back under its own name and
    must deliver none of it again."""
    adopt_after, buffer = 5.0, 100
    # A small --drain-buffer: most of what the failing drain holds is in its spool (what a
    # SIGKILL cannot take away), not in the node's memory (which it can).
    extra = ["--heartbeat", "1", "--spool-adopt-after", str(adopt_after), "--drain-buffer", str(buffer)]
    w = World("departed-node", args, node_args=extra)
    check = Check()
    peer = Node(os.path.join(w.root, "peer"), w.cfg, w.shard, ["--history", str(args.history), *extra], name="peer")
    try:
        peer.start()
        w.start_load()
        before, rss_before = metrics(w.node), w.node.rss()
        w.run_for(scaled(args, 20))
        w.sink_mode("error")
        w.run_for(scaled(args, 15))
        # The senders stop first: an HTTP sender would retry its batch at a dead node for ever.
        w.stop_load()
        spool_at_kill = w.spool_bytes()
        killed_at = time.time()
        w.node.signal(signal.SIGKILL)
        w.event(f"node soak SIGKILLed, not started again; its spool holds {spool_at_kill} bytes")
        w.sink_mode("ok")
        expected = w.expected()
        end = time.monotonic() + 60
        while w.spool_bytes() != 0 and time.monotonic() < end:
            time.sleep(0.2)
        took = [round(time.time() - killed_at, 1)]
        w.event(f"soak's spool {'empty' if w.spool_bytes() == 0 else 'NOT empty'} {took[0]} s after the kill")
        w.settle(expected, quiet=10, limit=120, tail=False)
        emptied = w.spool_bytes()
        adopted = int(metrics(peer).get("logplex_spool_adopted_total", 0))
        adopted_log = [line for line in open(peer.log_path, errors="replace").read().splitlines()
                       if "spool_adopted" in line]
        rx = w.receivers(expected)
        dups_before_return = rx["sink_duplicates"]
        # soak returns under its own name: nothing of its old spool may arrive a second time.
        w.node.start()
        w.event("node soak started again under its own name")
        w.run_for(scaled(args, 10))
        rx = w.receivers(expected)
        sink_missing = {sid: sorted(expected[sid] - sink_seqs(w, sid)) for sid in ("h", "t")}
        stored = backlog(w.shard, "soak")
        routed_lost = len(expected["t"] - stored.get("t", set()))
        # Lost with soak's memory: acked h lines, and t lines the router had (in the backlog).
        memory_lost = len(sink_missing["h"]) + max(0, len(sink_missing["t"]) - routed_lost)
        target = 100 * 1024
        batch = target // (len(message("app", "h", 0, "%.6f" % time.time())) - 2) + 1
        sent = len(expected["h"]) + len(expected["t"])
        delivered = sum(v["got"] for v in rx["sink"].values())
        dups = sum(rx["sink_duplicates"].values())
        check("soak's spool was adopted and emptied", emptied == 0 and adopted > 0, "0 bytes left, adopted > 0",
              [emptied, adopted])
        check("nothing delivered twice, before or after soak returned", not dups, 0,
              [dups_before_return, rx["sink_duplicates"]])
        check(f"lost only what soak held in memory (<= --drain-buffer + one batch, {buffer} + {batch})",
              memory_lost <= buffer + batch, f"<= {buffer + batch}", memory_lost)
        result = {
            "load": f"{args.rate:g} msg/s to soak until its SIGKILL", "spool_bytes_at_kill": spool_at_kill,
            "adopted_messages": adopted, "adopted_log": adopted_log[:5], "spool_empty_s_after_kill": took[0],
            "sent_total": sent, "delivered": delivered, "lost": sent - delivered, "lost_in_soak_memory": memory_lost,
            "duplicates": rx["sink_duplicates"], "receivers": rx, "metrics": drain_metrics(before, metrics(w.node)),
            "rss_mib": [rss_before, w.node.rss()],
            "summary": {"sent": sent, "delivered": delivered, "lost": sent - delivered, "duplicates": dups,
                        "adopted by peer": adopted, "spool bytes at kill": spool_at_kill,
                        "spool empty s after kill": took[0]},
        }
        return finish(w, check, result, lost_cell=f"drain {sent - delivered} (soak's memory at the kill: "
                                                   f"{memory_lost}); duplicates {dups}; adopted {adopted}")
    finally:
        if peer.proc is not None and peer.proc.poll() is None:
            peer.proc.terminate()
            peer.proc.wait(30)
        w.close()


def case_empty_config(args) -> dict:
    """The config Redis SIGKILLed and started again at once WITHOUT its data (no SAVE), under load, the
    drain failing (500) so it spools: the node must refuse the empty config, re-seed it from its cache
    and lose nothing. 6 min (1 min with --quick)."""
    w = World("empty-config", args)
    check = Check()
    try:
        w.start_load()
        before, rss_before, pid = metrics(w.node), w.node.rss(), w.node.proc.pid
        w.sink_mode("error")
        w.run_for(scaled(args, 120))
        spool_before = w.spool_bytes()
        w.cfg.kill()
        w.cfg.start()  # empty: these Redis servers run without persistence
        restarted_at = time.time()
        w.event(f"config Redis SIGKILLed and started again empty (spool {spool_before} bytes)")
        back = None
        while time.time() - restarted_at < 30:
            status, _, _ = api(w.node, "PUT", "/v3/channels/after", {"tokens": ["late"]})
            if status == 201:
                back = round(time.time() - restarted_at, 1)
                break
            time.sleep(0.25)
        w.event(f"API writes answer again after {back} s (the --auth credential works)")
        spool_after = w.spool_bytes()
        health = api(w.node, "GET", "/healthcheck")
        w.run_for(scaled(args, 60))
        w.sink_mode("ok")
        w.run_for(scaled(args, 180))
        w.stop_load()
        expected = w.expected()
        w.settle(expected)
        after = metrics(w.node)
        rx = w.receivers(expected)
        d = drain_metrics(before, after)
        reseeds = int(after.get("logplex_config_reseeds_total", 0))
        check("node stayed up (same process)", w.node.alive() and w.node.proc.pid == pid, True, w.node.alive())
        check("the spool was kept through the empty config", spool_after > 0, "> 0 bytes", spool_after)
        check("writes came back by themselves after one re-seed", back is not None and reseeds == 1,
              "201 and 1 re-seed", [back, reseeds])
        unknown = int(after.get("logplex_messages_unknown_token_total", 0)
                      - before.get("logplex_messages_unknown_token_total", 0))
        check("nothing dropped as an unknown token", unknown == 0, 0, unknown)
        for receiver in ("sink", "tail", "backlog"):
            check(f"{receiver} lost nothing", lost(rx, receiver) == 0, 0, lost(rx, receiver))
        sent = sum(w.http.acked) + sum(w.tcp.written)
        return finish(w, check, {
            "load": f"{args.rate:g} msg/s", "writes_back_after_s": back, "reseeds": reseeds,
            "spool_bytes_before_after": [spool_before, spool_after], "health_after": health[:2],
            "summary": {"sent": sent, "delivered (unique)": sum((w.sink_stats() or {}).get("unique", {}).values()),
                        "lost at drain": lost(rx, "sink"), "duplicates at drain": rx["sink_duplicates"],
                        "writes back after s": back, "re-seeds": reseeds},
            "metrics": d, "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
        }, lost_cell=f"drain {lost(rx, 'sink')}, tail {lost(rx, 'tail')}, backlog {lost(rx, 'backlog')}")
    finally:
        w.close()
