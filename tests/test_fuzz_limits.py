"""Every reader fuzzed under a 1 GiB address-space limit (issue #11): no exit 1, no signal death, no case
over 2 s, no warning (run with -W error: a warning is a stray stderr line). The harness
(tests/fuzz_harness.py) runs in a child process, so a crash or an allocation the
limit refuses cannot take pytest down with it; longer runs: `python tests/fuzz_harness.py apr --cases 100000`.
"""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("fuzz_harness.py")
LIMIT = 1024 * 1024 * 1024
CASES = {"apr": 1500, "model": 400, "safetensors": 1500, "gguf": 1500, "hf": 800, "run": 1000, "tokenizer": 600}
CLI_CHECK = {"run": ["runs"]}  # what the sampled inputs go through on the command line; the rest: verify --deep


def _address_space_limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


@pytest.mark.parametrize("target", sorted(CASES))
def test_reader_survives_mutated_inputs_under_a_memory_limit(tmp_path, target):
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            HARNESS,
            target,
            "--cases",
            str(CASES[target]),
            "--seed",
            "11",
            "--sample",
            tmp_path,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1), f"signal death or crash: rc={proc.returncode}\n{proc.stderr[-3000:]}"
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["failures"] == [], json.dumps(summary, indent=1)
    assert summary["rejected"] > 0 and summary["accepted"] > 0  # the mutations reach both outcomes
    assert summary["slowest_s"] < 2.0
    assert proc.returncode == 0
    for sample in sorted(tmp_path.glob(f"{target}-*"))[:3]:  # the same inputs through the real CLI, same limit
        command = CLI_CHECK.get(target, ["verify", "--deep"])
        r = subprocess.run([sys.executable, "-m", "aprtool", *command, sample],
                           capture_output=True, text=True, timeout=120, preexec_fn=_address_space_limit)  # fmt: skip
        assert r.returncode in (0, 3, 4, 5) and "Traceback" not in r.stderr, (sample.name, r.returncode, r.stderr)


def _sparse(path: Path, head: bytes, data_bytes: int) -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + data_bytes)  # a hole: no disk used
    return path


def _big_safetensors(path: Path, nbytes: int) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    return _sparse(path, struct.pack("<Q", len(header)) + header, nbytes)


def _big_gguf(path: Path, nbytes: int) -> Path:
    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    head += string("general.architecture") + struct.pack("<I", 8) + string("llama")
    head += string("w") + struct.pack("<IQIQ", 1, nbytes // 4, 0, 0)  # one F32 tensor at offset 0
    head += b"\0" * (-len(head) % 32)
    return _sparse(path, head, nbytes)


@pytest.mark.parametrize("make", [_big_safetensors, _big_gguf], ids=["safetensors", "gguf"])
def test_a_file_larger_than_the_memory_limit_is_listed_and_refused_by_name(tmp_path, make):
    big = make(tmp_path / "big.model", 2 * LIMIT)  # twice what the process may map

    def cli(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "aprtool", *map(str, args)], capture_output=True, text=True,
                              timeout=120, preexec_fn=_address_space_limit)  # fmt: skip

    listed = cli("inspect", big, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["name"] for t in json.loads(listed.stdout)["tensors"]] == ["w"]
    deep = cli("verify", "--deep", big)
    assert deep.returncode in (3, 4) and "Traceback" not in deep.stderr, deep.stderr
    assert str(big) in deep.stderr and "'w'" in deep.stderr, deep.stderr
