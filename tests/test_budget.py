"""compress --budget BYTES (issue #14 §3): each tensor's width chosen so that the written file fits,
measured on the file itself; an unreachable budget names the smallest size; bad budgets are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

import aprtool
from aprtool.codecs import Clip, quantize
from aprtool.ops.budget import Choice, allocate, fill, refine, rounding_cost, undo_last

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "fixtures" / "models" / "tiny-bytes.apr"
ARGS = ("--min-elements", "4096")


def _smallest(cli, tmp_path) -> int:
    r = cli("compress", MODEL, "-o", tmp_path / "floor.apr", *ARGS, "--budget", "1", "--json")
    assert r.code == 5 and "the smallest file reachable is" in r.stderr, r.stderr
    return int(r.stderr.split("the smallest file reachable is ")[1].split(" bytes")[0].replace(",", ""))


def test_the_file_never_exceeds_the_budget_and_uses_it(cli, tmp_path):
    floor = _smallest(cli, tmp_path)
    uniform6 = tmp_path / "u6.apr"
    assert cli("compress", MODEL, "-o", uniform6, *ARGS).code == 0
    previous = 0
    for budget in (floor, floor + 3000, floor + 9000, uniform6.stat().st_size, 10**7):
        out = tmp_path / f"b{budget}.apr"
        r = cli("compress", MODEL, "-o", out, *ARGS, "--budget", str(budget), "--json")
        assert r.code == 0, r.stderr
        size = out.stat().st_size
        assert size <= budget and r.json()["budget"]["file_bytes"] == size == r.json()["output_bytes"]
        assert size >= previous  # more bytes allowed, never a smaller file
        previous = size
        assert aprtool.verify_file(out, deep=True).valid
    # an ample budget buys the widest grid everywhere, and leaves the matrices below --min-elements float
    assert r.json()["budget"]["widths"] == {"int8": 11, "f16": 4}


def test_a_calibrated_budget_fits_exactly_and_reports_its_rounding_and_local_search(cli, tmp_path):
    floor = _smallest(cli, tmp_path)
    out = tmp_path / "c.apr"
    r = cli("compress", MODEL, "-o", out, *ARGS, "--budget", str(floor + 6000), "--calibrate", "--calib-tokens", "4096",
            "--json", timeout=300)  # fmt: skip
    assert r.code == 0, r.stderr
    budget = r.json()["budget"]
    assert out.stat().st_size == budget["file_bytes"] <= floor + 6000
    assert isinstance(budget["refine_steps"], int) and budget["refine_steps"] >= 0
    quantized = sum(t["action"].startswith("int") for t in r.json()["tensors"])
    kept_float = budget["widths"].get("f16", 0)
    assert sum(budget["methods"].values()) == quantized == sum(budget["widths"].values()) - kept_float
    assert sum(budget["widths"].values()) == 15  # 11 matrices of >= 4096 elements, 4 k/v projections of 2048
    assert aprtool.verify_file(out, deep=True).valid
    shown = cli("compress", MODEL, "-o", out, *ARGS, "--budget", str(floor + 6000), "--calibrate", "--calib-tokens",
                "4096", "--force", timeout=300)  # fmt: skip
    assert shown.code == 0 and f"file {budget['file_bytes']:,} bytes" in shown.stdout


def test_an_unreachable_budget_names_the_smallest_size_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "o.apr"
    floor = _smallest(cli, tmp_path)
    r = cli("compress", MODEL, "-o", out, *ARGS, "--budget", str(floor - 1))
    assert r.code == 5 and f"{floor:,} bytes" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".aprtool-budget-*"))  # no temp file left either


def test_the_smallest_file_also_quantizes_the_matrices_below_min_elements(cli, tmp_path):
    # --min-elements 4096 leaves the 32×64 k/v projections float; under a budget they are candidates too,
    # so the smallest file has every matrix at 4 bits (they were 16 kB of fp16 no width could shrink).
    floor = _smallest(cli, tmp_path)
    r = cli("compress", MODEL, "-o", tmp_path / "f.apr", *ARGS, "--budget", str(floor), "--json")
    assert r.code == 0, r.stderr
    assert r.json()["budget"]["widths"] == {"int4": 15}
    kv = [t for t in r.json()["tensors"] if t["name"].endswith(("k_proj.weight", "v_proj.weight"))]
    assert len(kv) == 4 and all(t["action"] == "int4" and t["shape"] == [32, 64] for t in kv)
    plain = cli("compress", MODEL, "-o", tmp_path / "p.apr", *ARGS, "--bits", "4", "--json").json()
    assert floor < plain["output_bytes"]  # uniform int4 keeps them fp16


def test_under_a_budget_a_matrix_too_small_to_gain_stays_float(cli, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    src = tmp_path / "m.safetensors"
    rng = np.random.default_rng(0)
    save_file({"big.weight": rng.standard_normal((64, 96)).astype(np.float32),
               "mid.weight": rng.standard_normal((32, 40)).astype(np.float32),  # 1,280: may be quantized
               "small.weight": rng.standard_normal((16, 16)).astype(np.float32),  # 256: its record would outweigh it
               "norm.weight": rng.standard_normal(64).astype(np.float32)}, str(src))  # fmt: skip
    r = cli("compress", src, "-o", tmp_path / "o.apr", *ARGS, "--budget", "1")
    floor = int(r.stderr.split("the smallest file reachable is ")[1].split(" bytes")[0].replace(",", ""))
    r = cli("compress", src, "-o", tmp_path / "o.apr", *ARGS, "--budget", str(floor), "--json")
    assert r.code == 0, r.stderr
    rows = {t["name"]: t for t in r.json()["tensors"]}
    assert rows["big.weight"]["action"] == rows["mid.weight"]["action"] == "int4"
    assert rows["small.weight"]["action"] == rows["norm.weight"]["action"] == "passthrough"
    assert "cost" not in rows["small.weight"] and r.json()["budget"]["widths"] == {"int4": 2}
    ample = cli("compress", src, "-o", tmp_path / "a.apr", *ARGS, "--budget", "1MB", "--json").json()
    rows = {t["name"]: t for t in ample["tensors"]}  # room for everything: the small matrix is kept float
    assert rows["mid.weight"]["action"] == "passthrough" and rows["mid.weight"]["width"] == "f16"
    assert ample["budget"]["widths"] == {"f16": 1, "int8": 1}


def test_bits_with_a_budget_is_refused_rather_than_ignored(cli, tmp_path):
    # the budget chooses every width; a --bits it silently overrode would mislead
    r = cli("compress", MODEL, "-o", tmp_path / "o.apr", *ARGS, "--bits", "5", "--budget", "60kB")
    assert r.code == 2 and "--bits with --budget" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.apr").exists()


@pytest.mark.parametrize("flag", [("--calib-data", "somewhere"), ("--calib-tokens", "1024")])
def test_calibration_options_without_calibrate_are_refused_rather_than_ignored(cli, tmp_path, flag):
    r = cli("compress", MODEL, "-o", tmp_path / "o.apr", *ARGS, *flag)
    assert r.code == 2 and f"{flag[0]} sets what --calibrate runs on" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.apr").exists()


@pytest.mark.parametrize("budget", ["lots", "-5", "16 furlongs", "1.5B"])
def test_an_unparsable_budget_is_a_usage_error(cli, tmp_path, budget):
    r = cli("compress", MODEL, "-o", tmp_path / "o.apr", "--budget", budget)
    assert r.code == 2 and "--budget" in r.stderr and not (tmp_path / "o.apr").exists()


def test_the_allocation_follows_cost_saved_per_byte():
    import numpy as np

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)

    def options(scale: float) -> list[Choice]:
        qs = [quantize(w, Clip.parse("absmax"), b) for b in (4, 5, 6)]
        return [Choice(q, {}, 100 * q.bits, scale * rounding_cost(w, q, None)) for q in qs]

    choices = {"cheap": options(1.0), "dear": options(100.0)}  # same sizes, 'dear' errors cost 100x
    chosen, taken = allocate(choices, 800 + 100 + 100)  # room for two upgrades past 4 + 4 bits
    assert choices["dear"][chosen["dear"]].bits == 6 and choices["cheap"][chosen["cheap"]].bits == 4
    assert undo_last(chosen, taken, choices) and choices["dear"][chosen["dear"]].bits == 5


def test_refine_corrects_costs_that_do_not_add_up_and_stays_within_the_payload():
    import numpy as np

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    qs = [quantize(w, Clip.parse("absmax"), b) for b in (4, 5, 6)]

    def options(costs: list[float]) -> list[Choice]:
        return [Choice(q, {}, 100 * q.bits, c) for q, c in zip(qs, costs, strict=True)]

    # One at a time "a" looks dearer to leave coarse, so the allocation upgrades it; but "a" and "b"
    # coarse together compound (b at 4 bits is what hurts): the measured loss says upgrade b instead.
    choices = {"a": options([10.0, 4.0, 3.0]), "b": options([8.0, 5.0, 4.0])}
    chosen, _ = allocate(choices, 900)  # room for one upgrade
    assert (chosen["a"], chosen["b"]) == (1, 0)

    def joint_loss(allocation: dict[str, int]) -> np.ndarray:  # b at 4 bits doubles a's cost
        a, b = (choices[n][allocation[n]].cost for n in ("a", "b"))
        return np.array([a * (2 if allocation["b"] == 0 else 1) + b])

    steps = refine(choices, chosen, 900, joint_loss, max_evals=20)
    assert steps and (steps[-1]["a"], steps[-1]["b"]) == (0, 1)
    assert all(sum(choices[n][i].payload for n, i in s.items()) <= 900 for s in steps)
    losses = [float(joint_loss(chosen)[0])] + [float(joint_loss(s)[0]) for s in steps]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == len(losses)  # each step lower
    assert refine(choices, chosen, 900, joint_loss, max_evals=1) == []  # the budget of evaluations holds


def test_refine_keeps_only_moves_whose_gain_stands_out_of_the_windows_noise():
    import numpy as np

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    qs = [quantize(w, Clip.parse("absmax"), b) for b in (4, 5)]
    choices = {"a": [Choice(q, {}, 100 * q.bits, 1.0 - 0.1 * (q.bits - 4)) for q in qs]}
    windows = np.random.default_rng(1).standard_normal(64)

    def losses(spread: float):
        def joint_loss(allocation: dict[str, int]) -> np.ndarray:  # a step up: 0.01 lower on average
            return 3.0 + (0.0 if allocation["a"] == 0 else -0.01 + spread * windows)

        return joint_loss

    assert refine(choices, {"a": 0}, 500, losses(0.001), max_evals=4) == [{"a": 1}]  # a gain of 94 SE
    assert refine(choices, {"a": 0}, 500, losses(0.1), max_evals=4) == []  # a gain of 1.6 SE: noise


def test_fill_spends_bytes_the_loss_cannot_place_on_weight_error_and_stays_within_the_payload():
    import numpy as np

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    qs = [quantize(w, Clip.parse("absmax"), b) for b in (4, 5, 6, 7, 8)]

    def options(scale: float) -> list[Choice]:  # the measured loss is flat: it cannot tell the widths apart
        return [Choice(q, {}, 100 * q.bits, 1.0, scale * rounding_cost(w, q, None)) for q in qs]

    choices = {"a": options(1.0), "b": options(50.0)}
    chosen, taken = allocate(choices, 1300)
    assert chosen == {"a": 0, "b": 0} and not taken  # no upgrade lowers the estimated cost
    before = dict(chosen)
    upgrades = fill(choices, chosen, 1300)  # room for 500 more bytes of 800 to the top
    assert sum(choices[n][i].payload for n, i in chosen.items()) <= 1300 and len(upgrades) >= 2
    errors = {n: choices[n][i].weight_error for n, i in chosen.items()}
    assert all(errors[n] < choices[n][0].weight_error for n in chosen)  # lower error, never higher
    assert fill(choices, dict(chosen), 1300) == []  # nothing fits any more
    top = dict(before)
    fill(choices, top, 10**6)
    assert top == {"a": 4, "b": 4}  # ample room: the widest grid everywhere
    while undo_last(chosen, upgrades, choices, before):
        pass
    assert chosen == before  # undone last-first back to the allocation, not to the smallest


def test_an_ample_calibrated_budget_buys_the_widest_grid_everywhere(cli, tmp_path):
    # On this barely trained model the calibration loss cannot tell widths apart; the allocation alone
    # stopped at a 48 kB file of mostly int4 under a 10 MB budget.
    out = tmp_path / "ample.apr"
    r = cli("compress", MODEL, "-o", out, *ARGS, "--budget", "10MB", "--calibrate", "--calib-tokens", "4096",
            "--json", timeout=300)  # fmt: skip
    assert r.code == 0, r.stderr
    budget = r.json()["budget"]
    assert budget["widths"] == {"int8": 11, "f16": 4} and budget["fill_steps"] > 0
    assert out.stat().st_size == budget["file_bytes"] <= 10**7 and aprtool.verify_file(out, deep=True).valid


def test_a_calibrated_budget_reports_progress_through_every_stage(tmp_path):
    from aprtool.ops.compress import CompressOptions, compress_file

    seen: dict[str, list[tuple[int, int]]] = {}
    options = CompressOptions(min_elements=4096, budget=60_000, calibrate=True, calib_tokens=1024)
    compress_file(MODEL, tmp_path / "p.apr", options, lambda stage, done, total: seen.setdefault(stage, []).append(
        (done, total)))  # fmt: skip
    for stage in ("candidates", "GPTQ candidates", "costing on calibration text", "code"):
        steps = seen[stage]
        assert [d for d, _ in steps] == list(range(1, len(steps) + 1)) and steps[-1][0] == steps[-1][1], stage
    assert seen["candidates"][-1][1] == 15 and seen["costing on calibration text"][-1][1] > 15


def test_without_a_clip_the_budget_also_chooses_each_tensors_clip(cli, tmp_path):
    uniform6 = tmp_path / "u6.apr"
    assert cli("compress", MODEL, "-o", uniform6, *ARGS, "--clip", "std:12.85").code == 0
    budget = str(uniform6.stat().st_size)
    fixed = cli("compress", MODEL, "-o", tmp_path / "f.apr", *ARGS, "--clip", "std:12.85", "--budget", budget, "--json")
    free = cli("compress", MODEL, "-o", tmp_path / "a.apr", *ARGS, "--budget", budget, "--json")
    assert fixed.code == 0 and free.code == 0, free.stderr
    fixed, free = fixed.json(), free.json()
    assert fixed["budget"]["clips"] == {"std:12.85": sum(fixed["budget"]["widths"].values())}
    assert sum(free["budget"]["clips"].values()) == sum(fixed["budget"]["clips"].values())
    assert free["budget"]["file_bytes"] <= int(budget) and free["clip_source"].startswith("default: per tensor")
    assert any(w.startswith("--budget without --calibrate") for w in free["warnings"])  # the proxy is said to be weak
    cost = {name: sum(t["cost"] for t in r["tensors"] if "cost" in t) for name, r in (("fixed", fixed), ("free", free))}
    assert cost["free"] < 0.9 * cost["fixed"], cost  # more ways to spend the same bytes: less squared error


def test_the_uncalibrated_budget_warning_suggests_calibrate_only_where_it_can_run(cli, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    src = tmp_path / "plain.safetensors"  # no architecture, no tokenizer: --calibrate would be refused
    rng = np.random.default_rng(0)
    save_file({"a.weight": rng.standard_normal((64, 96)).astype(np.float32)}, str(src))
    plain = cli("compress", src, "-o", tmp_path / "p.apr", *ARGS, "--budget", "10000", "--json")
    llama = cli("compress", MODEL, "-o", tmp_path / "m.apr", *ARGS, "--budget", "60000", "--json")
    assert plain.code == 0 and llama.code == 0, plain.stderr + llama.stderr
    (said,) = [w for w in plain.json()["warnings"] if w.startswith("--budget without --calibrate")]
    assert "needs a Llama-family model with a tokenizer" in said
    (said,) = [w for w in llama.json()["warnings"] if w.startswith("--budget without --calibrate")]
    assert said.endswith("--calibrate measures it (docs/performance.md)")


def test_the_allocation_is_printed_as_a_table_and_the_default_clips_as_a_tally(cli, tmp_path):
    r = cli("compress", MODEL, "-o", tmp_path / "b.apr", *ARGS, "--budget", "60000", "--json")
    chosen = [t for t in r.json()["tensors"] if "cost" in t]
    shown = cli("compress", MODEL, "-o", tmp_path / "b.apr", *ARGS, "--budget", "60000", "--force")
    assert shown.code == 0 and "allocation under --budget 60,000 bytes" in shown.stdout
    for t in chosen:  # one row per tensor: its name, width and clip as --json has them
        row = next(line for line in shown.stdout.splitlines() if f" {t['name']} " in line)
        assert f" {t.get('width') or 'int' + str(t['bits'])} " in row and f" {t.get('clip', '-')} " in row
    plain = cli("compress", MODEL, "-o", tmp_path / "p.apr", *ARGS)
    report = cli("compress", MODEL, "-o", tmp_path / "p.apr", *ARGS, "--force", "--json").json()
    clips = [t["clip"] for t in report["tensors"] if t["action"] != "passthrough"]
    expected = ", ".join(f"{c} ×{clips.count(c)}" for c in sorted(set(clips)))
    assert f"clips: {expected}" in plain.stdout


def test_a_budget_for_an_already_quantized_file_is_refused(cli, tmp_path):
    quantized = tmp_path / "q.apr"
    assert cli("compress", MODEL, "-o", quantized, *ARGS).code == 0
    r = cli("compress", quantized, "-o", tmp_path / "o.apr", "--budget", "60000")
    assert r.code == 2 and "already quantized" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.apr").exists()
