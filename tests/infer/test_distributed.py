"""`vggt.infer` end to end on gloo ranks: a plain run (world size 1), 2 ranks on two torchrun
agents meeting as two nodes would (ulysses), the same with --single-writer in a folder only rank
0 has, and 3 ranks on one (ring, as the small model has 2 heads) write the same frames, cameras
and tracks to a relative L2 error of 1e-5; and a rank killed in the middle of the forward ends
the whole run with a clear line, never a hang."""

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.infer_fault_worker import INJECTED
from tests.support.infer_inputs import (
    CONTENT_SHAPES,
    FAULT_WORKER,
    IMAGE_SIZES,
    SIZE,
    environment,
    run_infer,
    write_inputs,
)
from tests.support.launch import torchrun, torchrun_nodes

pytestmark = pytest.mark.distributed

BOUND = 1e-5
TIMEOUT_S = 300
FAULT_BOUND_S = 120
FRAME_KEYS = {"depth": (), "depth_conf": (), "world_points": (3,), "world_points_conf": ()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("infer"))


def arguments(inputs: dict[str, Path], out: Path) -> list[str]:
    return [
        str(inputs["images"]),
        "--out",
        str(out),
        "--checkpoint",
        str(inputs["checkpoint"]),
        "--size",
        SIZE,
        "--query-points",
        str(inputs["points"]),
        "--device",
        "cpu",
    ]


def run_on_two_nodes(
    inputs: dict[str, Path], out: Path, *extra: str, cwds: list[Path] | None = None
) -> subprocess.CompletedProcess:
    """vggt.infer on two torchrun agents of one rank each (c10d rendezvous on 127.0.0.1, as
    on two nodes; sharing the output folder unless `cwds` and a relative `out` give each its
    own); their outputs joined as one run's."""
    agents = torchrun_nodes(
        2,
        "vggt.infer",
        [*arguments(inputs, out), *extra],
        timeout_s=TIMEOUT_S,
        env=environment(),
        cwds=cwds,
    )
    status = max(agent.returncode for agent in agents)
    stdout = "".join(agent.stdout for agent in agents)
    stderr = "".join(agent.stderr for agent in agents)
    return subprocess.CompletedProcess([], status, stdout, stderr)


@pytest.fixture(scope="module")
def outputs(inputs: dict[str, Path]) -> dict[int, Path]:
    """The output folder of a run at each world size: 2 ranks on two torchrun agents (nodes),
    3 on one."""
    folders = {}
    for ranks in (1, 2, 3):
        out = inputs["root"] / f"out{ranks}"
        if ranks == 2:
            completed = run_on_two_nodes(inputs, out)
        else:
            completed = run_infer(ranks, arguments(inputs, out), TIMEOUT_S)
        assert completed.returncode == 0, completed.stderr[-4000:]
        assert f"4 frames on {ranks} rank" in completed.stdout
        assert "estimated requirement per rank" in completed.stderr
        assert "(not checked on the CPU)" in completed.stderr
        folders[ranks] = out
    return folders


def rel_l2(ours: np.ndarray, reference: np.ndarray) -> float:
    """||ours - reference|| / ||reference|| over the finite entries, which must coincide (a
    random model's field of view may be 0, so a focal length infinite)."""
    finite = np.isfinite(reference)
    assert np.array_equal(finite, np.isfinite(ours))
    difference = ours[finite].astype(np.float64) - reference[finite]
    return float(np.linalg.norm(difference) / np.linalg.norm(reference[finite]))


def all_arrays(out: Path) -> dict[str, np.ndarray]:
    """Every array the run wrote, named file:key."""
    arrays = {}
    for path in sorted(out.rglob("*.npz")):
        with np.load(path) as data:
            arrays.update({f"{path.relative_to(out)}:{key}": data[key] for key in data.files})
    return arrays


def test_files_keys_shapes_and_dtypes(outputs: dict[int, Path]) -> None:
    out = outputs[2]
    frames = sorted((out / "frames").iterdir())
    assert [path.name for path in frames] == [f"{i:06d}.npz" for i in range(4)]
    for path, (height, width) in zip(frames, CONTENT_SHAPES, strict=True):
        with np.load(path) as data:
            assert set(data.files) == set(FRAME_KEYS)
            for key, trailing in FRAME_KEYS.items():
                assert data[key].shape == (height, width, *trailing), (path.name, key)
                assert data[key].dtype == np.float32
    with np.load(out / "cameras.npz") as cameras:
        shapes = {key: cameras[key].shape for key in cameras.files}
        assert shapes == {"pose_enc": (4, 9), "extrinsic": (4, 3, 4), "intrinsic": (4, 3, 3)}
        # principal points in each frame's own pixels: the 112-row frames were padded by 14
        assert cameras["intrinsic"][:, :2, 2].tolist() == [[70, 56], [70, 70], [70, 56], [70, 70]]
    with np.load(out / "tracks.npz") as tracks:
        shapes = {key: tracks[key].shape for key in tracks.files}
        assert shapes == {"track": (4, 3, 2), "vis": (4, 3), "conf": (4, 3)}
        assert all(tracks[key].dtype == np.float32 for key in tracks.files)
    assert not list(out.rglob(".*.tmp"))


def far_arrays(out: Path, reference: dict[str, np.ndarray]) -> dict[str, float]:
    """The relative L2 errors over BOUND of the arrays in `out` against `reference`, which
    must name the same arrays."""
    arrays = all_arrays(out)
    assert arrays.keys() == reference.keys()
    errors = {name: rel_l2(arrays[name], value) for name, value in reference.items()}
    return {name: error for name, error in errors.items() if error > BOUND}


def test_world_sizes_agree(outputs: dict[int, Path]) -> None:
    reference = all_arrays(outputs[1])
    assert len(reference) == 4 * 4 + 3 + 3
    for ranks in (2, 3):
        worst = far_arrays(outputs[ranks], reference)
        assert not worst, (ranks, worst)


def test_a_single_writer_writes_every_frame_in_a_folder_only_rank_0_has(
    inputs: dict[str, Path], outputs: dict[int, Path]
) -> None:
    nodes = [inputs["root"] / f"node{agent}" for agent in range(2)]
    for node in nodes:
        node.mkdir()
    completed = run_on_two_nodes(inputs, Path("out"), "--single-writer", cwds=nodes)
    assert completed.returncode == 0, completed.stderr[-4000:]
    # The agents' folders differ, so the shared-folder check would have refused the run.
    written = [node / "out" for node in nodes if (node / "out").exists()]
    assert len(written) == 1, "the rank that is not rank 0 created --out"
    run = json.loads((written[0] / "run.json").read_text())
    assert run["world_size"] == 2 and run["options"]["single_writer"]
    frames = sorted(path.name for path in (written[0] / "frames").iterdir())
    assert frames == [f"{i:06d}.npz" for i in range(4)]
    worst = far_arrays(written[0], all_arrays(outputs[1]))
    assert not worst, worst


def test_run_json(outputs: dict[int, Path]) -> None:
    run = json.loads((outputs[3] / "run.json").read_text())
    assert run["frames"] == 4 and run["world_size"] == 3
    assert [Path(name).name for name in run["names"]] == list(IMAGE_SIZES)
    assert run["frames_per_rank"] == [1, 1, 2]
    assert run["attention"] == "ring"
    assert all(rank["bytes_sent"] > 0 for rank in run["communication_per_rank"])
    assert len(run["peak_memory_bytes"]) == 3 and min(run["peak_memory_bytes"]) > 0
    assert run["options"]["size"] == int(SIZE) and run["seconds"] > 0


def run_with_fault(inputs: dict[str, Path], fault: str, timeout_s: float) -> list[str]:
    """Two ranks where rank 1 fails as `fault` says mid-forward: every rank must end with a
    non-zero status within FAULT_BOUND_S, no run.json written; the stderr lines."""
    out = inputs["root"] / f"fault-{fault}"
    started = time.monotonic()
    completed = torchrun(
        2,
        FAULT_WORKER,
        [*arguments(inputs, out), "--timeout", str(timeout_s)],
        env={**environment(), "VGGT_TEST_FAULT": fault},
        timeout_s=FAULT_BOUND_S,
    )
    assert time.monotonic() - started < FAULT_BOUND_S
    assert completed.returncode != 0
    assert not (out / "run.json").exists()
    return completed.stderr.splitlines()


def fired(lines: list[str], prefix: str) -> bool:
    """Whether a line holds `prefix` (a progress bar may have been on the line before it)."""
    return any(prefix in line for line in lines)


def test_a_killed_rank_ends_the_run(inputs: dict[str, Path]) -> None:
    lines = run_with_fault(inputs, "kill", 60)
    assert fired(lines, "vggt.infer: rank 0 stopped: another rank failed or did not answer"), lines[
        -40:
    ]


def test_a_rank_that_raises_is_named_by_the_others(inputs: dict[str, Path]) -> None:
    lines = run_with_fault(inputs, "raise", 60)
    assert fired(lines, f"vggt.infer: rank 1 failed: RuntimeError: {INJECTED}"), lines[-40:]
    stopped = f"vggt.infer: rank 0 stopped: rank 1 failed (RuntimeError: {INJECTED})"
    assert fired(lines, stopped), lines[-40:]


def test_a_hung_rank_is_caught_by_the_timeout(inputs: dict[str, Path]) -> None:
    lines = run_with_fault(inputs, "stop", 6)
    hung = "vggt.infer: rank 0 stopped: rank 1 has not answered for"
    assert fired(lines, hung), lines[-40:]
