"""The batcher's policy, decided after warm-up: the scenario preset, or for Server the latency target
and the engine's measured latency (idle) or sustained time (under load) per batch size.
"""

from __future__ import annotations

from collections.abc import Callable

from asyncbench.config import RunConfig, Scenario
from asyncbench.engines.base import Engine, ExecutionForm, Sustained, batch_sizes_upto
from asyncbench.runtime.batcher import BatchPolicy


def server_policy(latency: Callable[[int], float | None], engine_max: int, target_ns: int,
                  max_batch_size: int | None, max_queue_delay_us: int | None,
                  depth: int = 2) -> tuple[BatchPolicy, str]:
    """Server batching from the p99 target and the engine's measured (idle) latency per batch size.

    A sample can wait the queue delay, then for the batches ahead of it, then run: ``depth``
    batches in all (2 for engines that run batches side by side; a GPU's slots share one device,
    so there it is its slots per device: on the H200 a cap of 128 with 3 slots put the p50 at
    9.4 ms, about 3 x the 2.2 ms batch time plus the delay, at every load from 0.7 to 0.9 of the
    peak). Pick the largest batch B with depth * latency(B) <= 50% of the target: batches only
    grow that large under backlog, so a large cap costs no latency at low load and keeps the queue
    stable at high load. The delay is what is left of 60% of the target, capped at 10% of it; the
    rest is headroom for the harness and the tail. Explicit --max-batch-size / --max-queue-delay-us win.
    """
    target_s = target_ns / 1e9
    chosen = 1
    for b in batch_sizes_upto(max_batch_size or engine_max):
        lat = latency(b)
        if lat is not None and depth * lat <= 0.5 * target_s:
            chosen = b
    chosen = max_batch_size or chosen
    lat = latency(chosen) or 0.0
    auto_delay = min(0.6 * target_s - depth * lat, 0.1 * target_s)
    delay_us = max_queue_delay_us if max_queue_delay_us is not None else max(0, int(auto_delay * 1e6))
    note = (f"Server batching: max batch {chosen}, max queue delay {delay_us} us "
            f"(engine latency at batch {chosen}: {lat * 1e3:.3f} ms, {depth} batches deep; "
            f"p99 target {target_ns / 1e6:g} ms)")
    if 2 * (latency(1) or 0.0) > 0.6 * target_s:
        note += (f"; two batch-1 runs ({2 * (latency(1) or 0.0) * 1e3:.3f} ms) leave too little of the "
                 f"{target_ns / 1e6:g} ms p99 target for queueing and the harness, expect INVALID")
    return BatchPolicy(chosen, delay_us * 1000), note


HEADROOM = 0.92  # the batches the policy counts on must carry the target rate at no more than this utilisation
LATENCY_SHARE = 0.8  # of the p99 target, for filling a batch, the batch ahead of it and its own run
MIN_DELAY_SHARE = 0.1  # of the p99 target: the queue delay where the fill time is shorter


def rate_policy(service: Callable[[int], float | None], buckets: tuple[int, ...], target_qps: float,
                target_ns: int, concurrency: int, max_batch_size: int | None,
                max_queue_delay_us: int | None) -> tuple[BatchPolicy, str]:
    """Server batching for a known target rate from the engine's sustained time per batch.

    A batch of B fills in B / rate; with the device busy it runs for concurrency x service(B) of
    wall time (concurrency: batches run at once, a GPU's inference streams), behind at most one
    batch on its stream. The queue delay is the fill time of the smallest batch that carries the
    rate at <= 92% utilisation (B / service(B) >= rate / 0.92) and whose fill plus two runs fits
    in 80% of the p99 target, so at the target rate batches leave at least that full (at least
    10% of the target where that fits, as the idle-latency rule has it); the cap is
    the largest batch whose two runs fit beside that delay, so a backlog is worked off in larger,
    more efficient batches. Explicit --max-batch-size / --max-queue-delay-us win.
    """
    budget = LATENCY_SHARE * target_ns / 1e9
    measured = [(b, max(s, 1e-9)) for b in buckets if (s := service(b)) is not None]  # a null engine takes 0 s
    if max_batch_size is not None:
        measured = [(b, s) for b, s in measured if b <= max_batch_size]
    if not measured:
        raise ValueError("rate_policy needs the sustained time of at least one batch size")

    def run_twice(s: float) -> float:
        return 2 * concurrency * s

    fitting = [(b, s) for b, s in measured if b / target_qps + run_twice(s) <= budget] or measured[:1]
    carrying = [(b, s) for b, s in fitting if target_qps <= HEADROOM * b / s]
    small, small_s = carrying[0] if carrying else max(fitting, key=lambda r: r[0] / r[1])
    fill_us = int(small / target_qps * 1e6)
    room_us = int((budget - run_twice(small_s)) * 1e6)
    # Never below 10% of the target where it fits: each batch costs the harness a fixed time too
    # (which the engine's figures do not show), and idle dispatch skips the wait at low load.
    wanted_us = max(fill_us, int(MIN_DELAY_SHARE * target_ns / 1e3))
    delay_us = max_queue_delay_us if max_queue_delay_us is not None else max(0, min(wanted_us, room_us))
    cap, cap_s = small, small_s
    for b, s in measured:
        if b > cap and delay_us / 1e6 + run_twice(s) <= budget:
            cap, cap_s = b, s
    if max_batch_size is not None:
        cap, cap_s = max(measured)
    rate = cap / cap_s
    sustains = f"{rate:,.0f}/s" if rate < 1e9 else "any rate (the engine takes no time)"
    note = (f"Server batching for {target_qps:g} QPS: max batch {cap}, max queue delay {delay_us} us (batches of "
            f"{small} fill in {fill_us} us at that rate; batch {cap} sustains {sustains} with {concurrency} "
            f"at once; p99 target {target_ns / 1e6:g} ms)")
    if target_qps > HEADROOM * rate:
        note += (f"; {target_qps:g} QPS is above {HEADROOM:.0%} of the best rate within the latency target "
                 f"({rate:,.0f}/s), expect INVALID")
    return BatchPolicy(cap, delay_us * 1000), note


def batch_policy(cfg: RunConfig, engine: Engine, target_latency_ns: int,
                 target_qps: float | None = None) -> tuple[BatchPolicy, str]:
    """The batcher's policy for this scenario: the preset, overridden by explicit command-line values.

    Server with a target rate, on an engine that measures its sustained rate (GPU, null): sized
    for that rate (``rate_policy``); otherwise from the idle latency alone (``server_policy``).
    """
    batching, caps = cfg.batching, engine.capabilities
    if cfg.scenario == Scenario.SERVER:
        if target_qps and isinstance(engine, Sustained) and engine.sustained(caps.buckets[0]) is not None:
            policy, note = rate_policy(engine.sustained, caps.buckets, target_qps, target_latency_ns,
                                       engine.concurrency,
                                       batching.max_batch_size, batching.max_queue_delay_us)
        else:
            depth = max(2, caps.slots_per_device)
            policy, note = server_policy(engine.latency, caps.max_batch_size, target_latency_ns,
                                         batching.max_batch_size, batching.max_queue_delay_us, depth)
        idle_gap_ns = None
        if batching.idle_dispatch:
            # At most one batch per fifth of the queue delay goes to an idle engine at once.
            idle_gap_ns = policy.max_queue_delay_ns // 5
            note += f"; an idle engine takes what is pending at once, {idle_gap_ns / 1000:g} us after the last batch"
        return BatchPolicy(policy.max_batch_size, policy.max_queue_delay_ns, batching.preferred_batch_sizes,
                           idle_gap_ns), note
    preset = cfg.preset
    inline = runs_inline(cfg, engine)
    max_batch = min(batching.max_batch_size or preset.max_batch_size or caps.max_batch_size, caps.max_batch_size)
    delay_us = batching.max_queue_delay_us if batching.max_queue_delay_us is not None else (
        preset.max_queue_delay_us or 0)
    policy = BatchPolicy(max_batch, delay_us * 1000, batching.preferred_batch_sizes)
    if inline:
        return policy, (f"{cfg.scenario}: each query runs on LoadGen's issue thread and completes there "
                        f"(batches up to {policy.max_batch_size}; --no-inline sends it through the event loop)")
    return policy, f"{cfg.scenario} batching: max batch {policy.max_batch_size}, max queue delay {delay_us} us"


def runs_inline(cfg: RunConfig, engine: Engine) -> bool:
    """Latency-bound scenarios on a device engine take the inline driver (asyncbench.runtime.inline) unless turned off.

    LoadGen holds one query outstanding in SingleStream and MultiStream, so there is nothing to
    batch across queries, and the hand-offs to the loop and back were most of the per-query time.
    """
    return (cfg.batching.inline and cfg.scenario in (Scenario.SINGLE_STREAM, Scenario.MULTI_STREAM)
            and engine.capabilities.form is ExecutionForm.DEVICE)
