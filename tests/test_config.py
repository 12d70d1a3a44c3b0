"""The run configuration: every choice list is one enum, parsed the same way everywhere."""

from __future__ import annotations

import pytest
from conftest import run_cli

from asyncbench.cli import build_parser, run_configs
from asyncbench.config import (
    Choice,
    Completion,
    EngineKind,
    Loop,
    Precision,
    Scenario,
    TestMode,
    TorchCompile,
)

CHOICES: list[type[Choice]] = [Scenario, TestMode, EngineKind, Precision, Loop, Completion, TorchCompile]


@pytest.mark.parametrize("kind", CHOICES)
def test_choices_parse_in_any_case_and_name_the_valid_ones(kind: type[Choice]) -> None:
    for member in kind:
        assert kind.parse(member.value.upper()) is member and kind.parse(member.value) is member
    with pytest.raises(ValueError) as info:
        kind.parse("no-such-choice")
    assert all(member.value in str(info.value) for member in kind)


def test_the_cli_builds_one_nested_config_per_scenario() -> None:
    args = build_parser().parse_args(["run", "--scenarios=server,Offline", "--engine", "NULL", "--max-batch-size", "16",
                                      "--target-qps", "500", "--completion", "hostfunc", "--loop", "asyncio"])
    server, offline = run_configs(args)
    assert (server.scenario, offline.scenario) == (Scenario.SERVER, Scenario.OFFLINE)
    assert server.engine.kind is EngineKind.NULL and server.batching.max_batch_size == 16
    assert server.loadgen.target_qps == 500 and server.gpu.completion is Completion.HOSTFUNC
    assert server.process.loop is Loop.ASYNCIO and server.loadgen == offline.loadgen
    assert server.gpu.cuda_graphs and server.batching.inline and server.batching.idle_dispatch  # the defaults
    off = run_configs(build_parser().parse_args(["run", "--cuda-graphs", "off", "--no-inline",
                                                 "--no-idle-dispatch"]))[0]
    assert not (off.gpu.cuda_graphs or off.batching.inline or off.batching.idle_dispatch)


@pytest.mark.parametrize("flag", ["--completion", "--engine", "--loop", "--precision", "--test-mode", "--cuda-graphs"])
def test_an_unknown_choice_is_one_line_and_exit_2(flag: str) -> None:
    done = run_cli(flag, "bogus")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "bogus" in done.stderr
