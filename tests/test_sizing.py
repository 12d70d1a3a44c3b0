"""Batch sizing (engine sizes and slots, Server batching from measured latency), presets, report formatting."""

from __future__ import annotations

from asyncbench.config import BatchingConfig, EngineConfig, EngineKind, LoadGenConfig, RunConfig, Scenario
from asyncbench.engines.base import batch_sizes_upto
from asyncbench.engines.null import NullEngine
from asyncbench.engines.sizing import engine_sizing
from asyncbench.harness.plan import (
    ABORT_QUERIES,
    DEFAULT_MEMORY_BUDGET_MB,
    OFFLINE_OVERESTIMATE,
    OFFLINE_SLACK,
    QUERY_MARGIN,
    SERVER_LOAD,
    loadgen_bytes,
    plan_run,
)
from asyncbench.harness.policy import batch_policy, server_policy
from asyncbench.harness.report import format_histogram
from asyncbench.loadgen.sut import QueryCycle

MS = 1e-3


def test_batch_sizes_upto() -> None:
    assert batch_sizes_upto(1) == (1,)
    assert batch_sizes_upto(8) == (1, 2, 4, 8)
    assert batch_sizes_upto(12) == (1, 2, 4, 8, 12)


def test_engine_sizing_from_the_command_line_else_the_engine_kind() -> None:
    default = RunConfig()
    cpu = engine_sizing(default, EngineKind.ONNXRUNTIME)
    assert (cpu.max_batch_size, cpu.slots) == (32, 2)
    gpu = engine_sizing(default, EngineKind.TORCH)
    assert (gpu.buckets[-1], gpu.slots, gpu.buckets[:3]) == (1024, 4, (1, 2, 4))  # 2 inference streams + 2
    assert engine_sizing(default, EngineKind.NULL).max_batch_size == 1024
    assert engine_sizing(default, EngineKind.NULL).slots == 4  # the null engine's loop form models a device
    blocking = RunConfig(engine=EngineConfig(kind=EngineKind.NULL, null_spec="form=blocking"))
    assert engine_sizing(blocking, EngineKind.NULL).slots == 2  # worker threads side by side, as a CPU engine
    mine = engine_sizing(RunConfig(batching=BatchingConfig(max_batch_size=48, inflight=5)), EngineKind.TORCH)
    assert (mine.buckets, mine.slots) == ((1, 2, 4, 8, 16, 32, 48), 5)


def test_server_policy_picks_largest_batch_that_fits_and_caps_delay() -> None:
    latency = {1: 0.2 * MS, 2: 0.3 * MS, 4: 0.5 * MS, 8: 1.0 * MS, 16: 2.0 * MS, 32: 4.0 * MS}.get
    policy, note = server_policy(latency, 32, 10_000_000, None, None)
    assert policy.max_batch_size == 16  # 2 * 2.0 ms <= 5 ms; 2 * 4.0 ms is not
    assert policy.max_queue_delay_ns == 1_000_000  # min(6 ms - 4 ms, 1 ms)
    assert "max batch 16" in note and "INVALID" not in note


def test_server_policy_counts_the_batches_queued_on_one_device() -> None:
    # H200 figures: 3 slots on one GPU; batch 128 at 2.2 ms gave p50 9.4 ms under load.
    latency = {1: 0.2 * MS, 8: 0.3 * MS, 16: 0.4 * MS, 32: 0.6 * MS, 64: 1.2 * MS, 128: 2.2 * MS}.get
    side_by_side, _ = server_policy(latency, 128, 10_000_000, None, None)
    queued, note = server_policy(latency, 128, 10_000_000, None, None, depth=3)
    assert side_by_side.max_batch_size == 128  # 2 * 2.2 ms <= 5 ms
    assert queued.max_batch_size == 64  # 3 * 1.2 ms <= 5 ms; 3 * 2.2 ms is not
    assert queued.max_queue_delay_ns == 1_000_000  # min(6 ms - 3.6 ms, 1 ms)
    assert "3 batches deep" in note


def test_server_policy_warns_when_engine_too_slow() -> None:
    policy, note = server_policy({1: 15 * MS}.get, 1, 10_000_000, None, None)
    assert (policy.max_batch_size, policy.max_queue_delay_ns) == (1, 0)
    assert "expect INVALID" in note


def test_explicit_values_win_over_presets() -> None:
    engine = NullEngine(max_batch_size=64)
    policy, _ = server_policy(lambda b: 0.0, 64, 10_000_000, 16, 250)
    assert (policy.max_batch_size, policy.max_queue_delay_ns) == (16, 250_000)
    single, _ = batch_policy(RunConfig(Scenario.SINGLE_STREAM), engine, 10_000_000)
    assert (single.max_batch_size, single.max_queue_delay_ns) == (1, 0)
    offline, _ = batch_policy(RunConfig(Scenario.OFFLINE, batching=BatchingConfig(max_batch_size=32)), engine,
                              10_000_000)
    assert (offline.max_batch_size, offline.max_queue_delay_ns) == (32, 0)
    multi, _ = batch_policy(RunConfig(Scenario.MULTI_STREAM, batching=BatchingConfig(preferred_batch_sizes=(8,))),
                            engine, 10_000_000)
    assert (multi.max_batch_size, multi.preferred_batch_sizes) == (64, (8,))


def test_format_histogram() -> None:
    assert format_histogram({}) == "none"
    assert format_histogram({32: 24, 17: 1}) == "17x1, 32x24"
    folded = format_histogram({size: 1 for size in range(1, 40)})
    assert folded == "1x1, 2-3x2, 4-7x4, 8-15x8, 16-31x16, 32-63x8"


def test_expected_latencies_come_from_the_engine_unless_a_user_conf_is_given(tmp_path) -> None:
    latency = {1: 0.25 * MS, 8: 0.5 * MS}
    single = plan_run(RunConfig(Scenario.SINGLE_STREAM), 104, None, latency).options
    assert single.single_stream_expected_latency_ms == 0.25
    multi = plan_run(RunConfig(Scenario.MULTI_STREAM), 104, None, latency).options
    assert multi.multistream_expected_latency_ms == 0.5 and multi.single_stream_expected_latency_ms is None
    conf = tmp_path / "user.conf"
    conf.write_text("*.SingleStream.target_latency = 1\n")
    mine = plan_run(RunConfig(Scenario.SINGLE_STREAM, LoadGenConfig(user_conf=conf)), 104, None, latency)
    assert mine.options.single_stream_expected_latency_ms is None
    assert mine.sources["single_stream_expected_latency_ms"] == "user.conf"


def test_the_pipeline_cycle_sets_the_expected_latency_over_a_noisy_warm_up() -> None:
    # Seen on a 2-core AVX2 machine: warm-up 64.9 ms against a real p50 of 26.8 ms ("ran out of generated queries").
    plan = plan_run(RunConfig(Scenario.SINGLE_STREAM), 104, None, {1: 64.9 * MS}, cycle=QueryCycle(25 * MS, 26.8 * MS))
    assert plan.options.single_stream_expected_latency_ms == 25.0 and plan.options.min_duration_s == 10
    assert plan.sources["single_stream_expected_latency_ms"] == "measured per query through the pipeline"


def test_a_fast_sut_gets_a_quick_run_that_stops_quickly_and_still_ends_naturally() -> None:
    cycle = QueryCycle(45e-6, 100e-6)  # the null engine through the loop on 2 cores
    for scenario, key in ((Scenario.SINGLE_STREAM, "single_stream"), (Scenario.MULTI_STREAM, "multistream")):
        plan = plan_run(RunConfig(scenario), 104, None, {}, cycle=cycle)
        duration = plan.options.min_duration_s
        generated = 2 * duration / (getattr(plan.options, f"{key}_expected_latency_ms") / 1e3)
        assert generated <= ABORT_QUERIES[scenario] * 1.001  # what LoadGen must issue after Ctrl-C
        assert QUERY_MARGIN * duration / cycle.fast_s <= generated * 1.01  # even the fastest stretch ends naturally
        assert duration < 10 and any(n.startswith(f"quick run of {duration:g} s instead of 10 s") for n in plan.notes)
    # An explicit duration is the user's: kept, with the warning that the bounded queries run out first.
    plan = plan_run(RunConfig(Scenario.SINGLE_STREAM, LoadGenConfig(min_duration_s=20)), 104, None, {}, cycle=cycle)
    assert plan.options.min_duration_s == 20
    assert any("LoadGen will run out of queries and the result will be INVALID" in n for n in plan.notes)


def test_quick_runs_have_the_queries_early_stopping_needs() -> None:
    assert plan_run(RunConfig(Scenario.MULTI_STREAM), 104, None, {8: 1 * MS}).options.min_query_count == 662


def test_a_run_whose_query_count_sets_its_length_says_how_long_it_takes() -> None:
    slow = plan_run(RunConfig(Scenario.MULTI_STREAM), 104, None, {}, cycle=QueryCycle(0.09, 0.1))
    assert "this run will take about 66 s, not the 10 s minimum duration: 662 queries (min_query_count) at " \
           "the measured 100.000 ms each set its length" in slow.notes
    server = plan_run(RunConfig(Scenario.SERVER, LoadGenConfig(target_qps=10)), 104, None, {})
    assert any(n.startswith("this run will take about 102 s") for n in server.notes)
    long = plan_run(RunConfig(Scenario.SERVER, LoadGenConfig(target_qps=10, min_duration_s=3600)), 104, None, {})
    assert "this run will take about 60 min (its minimum duration)" in long.notes
    offline = plan_run(RunConfig(Scenario.OFFLINE), 104, None, {}, capacity_qps=150)
    assert "this run will take about 22 s, not the 10 s minimum duration: LoadGen's one query of 3300 samples at " \
           "the measured 150/s set its length" in offline.notes
    fast = plan_run(RunConfig(Scenario.SINGLE_STREAM), 104, None, {}, cycle=QueryCycle(1 * MS, 1 * MS))
    assert not any(n.startswith("this run will take") for n in fast.notes)


def test_derived_targets_come_from_what_the_pipeline_sustained() -> None:
    # The null engine's warm-up claims billions of samples/s; the pipeline under LoadGen moved 311k.
    server = plan_run(RunConfig(Scenario.SERVER), 104, 13.6e9, {}, capacity_qps=311_000)
    assert server.options.target_qps == round(311_000 * SERVER_LOAD, 1)
    assert server.sources["target_qps"] == f"pipeline's measured 311000/s x {SERVER_LOAD:g}"
    slow = plan_run(RunConfig(Scenario.OFFLINE), 104, 500.0, {}, capacity_qps=130)
    assert slow.options.target_qps == 130 * OFFLINE_OVERESTIMATE and slow.options.min_duration_s == 10


def test_an_offline_target_beyond_the_memory_bound_shortens_the_quick_run_instead() -> None:
    # A lower target than the SUT's rate makes LoadGen's one query finish early: INVALID by construction.
    plan = plan_run(RunConfig(Scenario.OFFLINE), 104, None, {}, capacity_qps=2.5e6)
    target, duration = plan.options.target_qps, plan.options.min_duration_s
    assert target == 2.5e6 * OFFLINE_OVERESTIMATE and duration is not None and duration < 1
    assert loadgen_bytes(Scenario.OFFLINE, OFFLINE_SLACK * target * duration) <= DEFAULT_MEMORY_BUDGET_MB * 1e6 * 1.01
    assert plan.sources["min_duration_s"] == "quick run shortened so its queries fit LoadGen's memory"
    # An explicit duration is kept: then the target is bounded, and said to be.
    mine = plan_run(RunConfig(Scenario.OFFLINE, LoadGenConfig(min_duration_s=10)), 104, None, {}, capacity_qps=2.5e6)
    assert mine.options.min_duration_s == 10 and mine.sources["target_qps"] == "memory bound"


def test_a_server_target_beyond_the_engine_is_said_and_its_backlog_bounded() -> None:
    plan = plan_run(RunConfig(Scenario.SERVER, LoadGenConfig(target_qps=5000)), 104, 120.0, {})
    assert plan.options.target_qps == 5000  # the user's rate is run as asked
    assert plan.options.server_max_async_queries == 120  # one second of the engine's work, not of the schedule
    assert any(n.startswith("target QPS 5000 is above the 120/s measured") for n in plan.notes)


def test_quiet_gc_stops_the_collector_for_the_run_only() -> None:
    import gc

    from asyncbench.runtime.process import quiet_gc

    assert gc.isenabled()
    with quiet_gc():
        assert not gc.isenabled() and gc.get_freeze_count() > 0
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_the_server_latency_target_comes_from_the_plan(tmp_path) -> None:
    default = plan_run(RunConfig(Scenario.SERVER), 104, 1000.0, {})
    assert default.target_latency_ns == 10_000_000  # LoadGen's built-in mlperf.conf
    conf = tmp_path / "user.conf"
    conf.write_text("mobilenet.Server.target_latency = 15\n")
    mine = plan_run(RunConfig(Scenario.SERVER, LoadGenConfig(user_conf=conf)), 104, 1000.0, {})
    assert mine.target_latency_ns == 15_000_000


def test_gpu_slots_default_to_one_per_inference_stream_plus_two() -> None:
    from asyncbench.config import GpuConfig
    from asyncbench.errors import ConfigError

    assert engine_sizing(RunConfig(gpu=GpuConfig(inference_streams=3)), EngineKind.TORCH).slots == 5
    one_slot = engine_sizing(RunConfig(batching=BatchingConfig(inflight=1)), EngineKind.TORCH)
    assert (one_slot.slots, one_slot.streams) == (1, 1)  # the default streams fit the slots asked for
    try:
        engine_sizing(RunConfig(batching=BatchingConfig(inflight=2), gpu=GpuConfig(inference_streams=3)),
                      EngineKind.TORCH)
    except ConfigError as e:
        assert "--inflight 2" in str(e) and "--inference-streams 3" in str(e)
    else:
        raise AssertionError("fewer slots than streams must be refused")


def _fixed_cost(fixed_ms: float, per_sample_ms: float):
    return lambda b: (fixed_ms + per_sample_ms * b) * MS


def test_rate_policy_waits_for_batches_that_carry_the_rate() -> None:
    from asyncbench.harness.policy import rate_policy

    # The null engine of the 200-QPS report: 2 ms + 0.1 ms per sample, one batch at a time, cap 16.
    policy, note = rate_policy(_fixed_cost(2.0, 0.1), batch_sizes_upto(16), 1000.0, 10_000_000, 1, None, None)
    # Batch 2 fills in 2 ms; 2 ms + 2 runs of batch 8 (2.8 ms) fit in 8 ms, batch 16's (3.6 ms) do not.
    assert policy.max_queue_delay_ns == 2_000_000 and policy.max_batch_size == 8
    assert "expect INVALID" not in note  # batch 8 sustains 2,857/s
    # At 3000 QPS nothing within the latency target carries the rate at 92%: said before the run.
    _, note = rate_policy(_fixed_cost(2.0, 0.1), batch_sizes_upto(16), 3000.0, 10_000_000, 1, None, None)
    assert "expect INVALID" in note


def test_rate_policy_counts_concurrent_batches_and_respects_explicit_values() -> None:
    from asyncbench.harness.policy import rate_policy

    service = {1: 0.15 * MS, 2: 0.16 * MS, 4: 0.18 * MS, 8: 0.22 * MS, 16: 0.3 * MS, 32: 0.5 * MS,
               64: 0.86 * MS, 128: 1.6 * MS, 256: 3.06 * MS}.get
    buckets = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    one, _ = rate_policy(service, buckets, 70_000.0, 10_000_000, 1, None, None)
    assert one.max_batch_size == 256 and one.max_queue_delay_ns == 1_828_000  # batch 128 fills in 1.83 ms
    # Three streams: a batch's wall time triples, so the largest batch that still fits is smaller.
    three, _ = rate_policy(service, buckets, 70_000.0, 10_000_000, 3, None, None)
    assert three.max_batch_size < one.max_batch_size
    mine, note = rate_policy(service, buckets, 70_000.0, 10_000_000, 1, 64, 500)
    assert (mine.max_batch_size, mine.max_queue_delay_ns) == (64, 500_000)


def test_server_batching_uses_the_rate_when_the_engine_knows_its_sustained_speed() -> None:
    engine = NullEngine(max_batch_size=16, fixed_s=2e-3, per_sample_s=1e-4)
    cfg = RunConfig(Scenario.SERVER)
    policy, note = batch_policy(cfg, engine, 10_000_000, target_qps=1000.0)
    assert policy.max_queue_delay_ns == 2_000_000 and "for 1000 QPS" in note
    _, idle_note = batch_policy(cfg, engine, 10_000_000)  # no rate: the idle-latency rule
    assert "for 1000 QPS" not in idle_note


def test_rate_policy_takes_an_engine_that_costs_nothing() -> None:
    from asyncbench.harness.policy import rate_policy

    policy, note = rate_policy(lambda b: 0.0, batch_sizes_upto(64), 5000.0, 10_000_000, 1, None, None)
    assert policy.max_batch_size == 64 and policy.max_queue_delay_ns == 1_000_000 and "INVALID" not in note
