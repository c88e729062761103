"""`dream bench --engine vllm` bookkeeping, without vLLM: passes on fresh engines in rotated order, the
record's rates and intervals from prompt x pass cells, mismatches over every pass, summed counters."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

import dream.serving.bench as vllm_bench
from dream.bench.prompts import PromptRecord
from dream.cli import main
from dream.commands.bench import add_arguments
from dream.commands.common import parse_methods
from dream.draft import DraftConfig, build_draft, save_draft
from dream.methods import SHIPPED_DRAFTS
from dream.serving.bench import MethodPass, VllmBenchConfig, format_table, run_vllm_bench
from dream.serving.engine import OPEN_END, EngineConfig, SpecCounters, parse_spec_schedule, speculative_config
from dream.serving.server import server_env, speculator

PROMPTS = [PromptRecord(i + 1, Path(f"{i}.png"), Image.new("RGB", (4, 4)), f"q{i}", "kind", None) for i in range(3)]
# seconds per token of each method: dream twice as fast as ar, eagle2 in between
SPEED = {"ar": 0.1, "pld": 0.08, "eagle2": 0.0625, "eagle3": 0.055, "dream": 0.05}


def fake_pass(method: str, pass_index: int) -> MethodPass:
    token_ids = [[7] * (4 + i) for i in range(len(PROMPTS))]
    if method == "pld" and pass_index == 1:
        token_ids[2] = [8] * 6                                     # one mismatch, in the second pass only
    latencies = [len(ids) * SPEED[method] for ids in token_ids]
    drafted = method in ("eagle2", "eagle3", "dream")
    counters = SpecCounters(drafts=10 if drafted else 0, draft_tokens=20 if drafted else 0,
                            accepted=10 if drafted else 0, accepted_per_position=(6, 4) if drafted else ())
    return MethodPass(token_ids, ["x"] * len(PROMPTS), [5] * len(PROMPTS), sum(latencies), latencies, counters)


@pytest.fixture
def engines(monkeypatch) -> list[str]:
    """The methods in the order their engines were started."""
    started: list[str] = []

    def run_method(cfg, method, prompts):
        started.append(method)
        return fake_pass(method, started.count(method) - 1)

    monkeypatch.setattr(vllm_bench, "_run_method", run_method)
    return started


def test_passes_rotate_and_the_record_has_intervals(engines):
    cfg = VllmBenchConfig(EngineConfig(target="t"), repeats=3, drafts={"eagle2": "e", "dream": "d"})
    record = run_vllm_bench(cfg, PROMPTS)
    assert engines == ["ar", "pld", "eagle2", "dream", "pld", "eagle2", "dream", "ar",
                       "eagle2", "dream", "ar", "pld"]
    methods = record["methods"]
    assert methods["dream"]["speedup"] == pytest.approx(2.0)
    assert methods["dream"]["vs_eagle2"] == pytest.approx(1.25)
    assert methods["dream"]["tokens_per_s_ci"] == pytest.approx([20.0, 20.0])      # no noise, no width
    assert methods["ar"]["speedup_ci"] == pytest.approx([1.0, 1.0])
    assert methods["dream"]["tau"] == pytest.approx(2.0)                            # 1 + 30 / 30 over passes
    assert methods["dream"]["acceptance_by_depth"] == pytest.approx([0.6, 0.4])
    assert methods["pld"]["mismatches"] == 1 and methods["pld"]["mismatched_lines"] == [3]
    assert methods["dream"]["generations"] == 9 and record["config"]["repeats"] == 3
    assert record["prompts"][2]["outputs"]["pld"]["token_ids"] == [7] * 6          # the first pass
    assert "dream" in format_table(record) and "1.25x" in format_table(record)


def test_several_in_flight_make_one_cell_per_pass(engines):
    cfg = VllmBenchConfig(EngineConfig(target="t"), concurrency=4, repeats=2)
    record = run_vllm_bench(cfg, PROMPTS, ("ar", "pld"))
    assert record["methods"]["pld"]["speedup"] == pytest.approx(1.25)
    assert "latency_s" in record["methods"]["ar"] and "vs_eagle2" not in record["methods"]["ar"]


def test_the_former_vllm_names_read_as_the_harness_names(engines):
    record = run_vllm_bench(VllmBenchConfig(EngineConfig(target="t")), PROMPTS, ("base", "ngram"))
    assert engines == ["ar", "pld"] and list(record["methods"]) == ["ar", "pld"]
    assert parse_methods("base,ngram,dream") == ["ar", "pld", "dream"]
    assert speculative_config("base", None, EngineConfig(target="t")) is None
    assert speculative_config("pld", None, EngineConfig(target="t"))["method"] == "ngram"
    assert speculator("none") == ("ar", None) and speculator("ngram") == ("pld", None)


def test_an_eagle3_draft_runs_beside_the_shipped_ones(engines, tmp_path, capsys):
    """--methods ar,eagle2,eagle3,dream --draft eagle3=DIR: eagle3 from DIR, eagle2 and dream shipped."""
    cfg = DraftConfig(architecture="eagle3", hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      intermediate_size=64, vocab_size=50, blocks=("self",), aux_layers=(1, 2, 3))
    eagle3 = save_draft(tmp_path / "eagle3", build_draft(cfg), {"family": "llama"})
    out = tmp_path / "bench.json"
    assert main(["bench", "--engine", "vllm", "--target", "smolvlm-135m", "--limit", "3", "--json", str(out),
                 "--methods", "ar,eagle2,eagle3,dream", "--draft", f"eagle3={eagle3}"]) == 0
    assert engines == ["ar", "eagle2", "eagle3", "dream"]
    record = json.loads(out.read_text())
    assert record["config"]["drafts"] == {"eagle3": str(eagle3), "eagle2": str(SHIPPED_DRAFTS / "eagle2"),
                                          "dream": str(SHIPPED_DRAFTS / "dream")}
    assert record["methods"]["eagle3"]["tau"] == 2.0 and "eagle3" in capsys.readouterr().out


def test_every_bench_flag_names_its_engine():
    parser = argparse.ArgumentParser()
    add_arguments(parser)              # asserts that every flag is in ENGINE_FLAGS
    parser.add_argument("--new-flag")
    with pytest.raises(AssertionError, match="--new-flag"):
        add_arguments(argparse.ArgumentParser(parents=[parser], add_help=False, conflict_handler="resolve"))


@pytest.mark.parametrize("args, message", [
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--plot", "x.png"], "--engine vllm does not take --plot"),
    (["--seed", "1", "--tree-top-k", "2"], "--engine vllm does not take --tree-top-k, --seed"),
    (["--methods", "ar,hf"], "--engine vllm methods are ar, pld, eagle2, eagle3, dream; not hf"),
    (["--methods", "ar,eagle3", "--draft", "eagle3=/no/such/draft"], "not a draft checkpoint directory"),
    (["--spec-schedule", "2-4:5"], "ranges must run from 1 upwards"),
    (["--spec-schedule", "1-4:5,4-:2"], "ranges must run from 1 upwards"),
    (["--spec-schedule", "1-4"], "expected ranges like 1-4:5"),
    (["--spec-schedule", "1-:3", "--num-speculative-tokens", "5"], "longest chain (3) must be the chain length (5)"),
])
def test_vllm_bench_user_errors_are_one_line(args, message, engines, capsys):
    assert main(["bench", "--engine", "vllm", "--target", "smolvlm-135m", *args]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and engines == []


def test_a_chain_schedule_reaches_vllm_as_its_dynamic_speculative_decoding():
    schedule = parse_spec_schedule("1-4:5, 5-8:2,9-:0")
    assert schedule == ((1, 4, 5), (5, 8, 2), (9, OPEN_END, 0))
    for method in ("pld", "eagle2"):
        spec = speculative_config(method, SHIPPED_DRAFTS / method if method != "pld" else None,
                                  EngineConfig(target="t", num_speculative_tokens=5, spec_schedule=schedule))
        assert spec["num_speculative_tokens"] == 5
        assert spec["num_speculative_tokens_per_batch_size"] == [[1, 4, 5], [5, 8, 2], [9, OPEN_END, 0]]
    assert "num_speculative_tokens_per_batch_size" not in speculative_config("pld", None, EngineConfig(target="t"))


def test_the_server_compiles_through_inductors_cache_unless_told_otherwise():
    """vLLM 0.32's AOT compile cache does not load under torch 2.13 (engine.COMPILE_ENV): off by default."""
    assert server_env({})["VLLM_USE_AOT_COMPILE"] == "0"
    assert server_env({"VLLM_USE_AOT_COMPILE": "1"})["VLLM_USE_AOT_COMPILE"] == "1"
