"""`vggt.infer`'s main: inputs checked on every rank, each rank's own frames loaded and run
through the model split over the ranks, each rank's frames written (with --single-writer, sent
to rank 0, which writes them), and rank 0 writing the cameras, tracks and run.json of the whole
sequence."""

import argparse
import hashlib
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from vggt.infer import outputs
from vggt.infer.checkpoint import (
    Checkpoint,
    build_model,
    read_config,
    read_weights,
    resolve_checkpoint,
)
from vggt.infer.errors import InputError
from vggt.infer.failures import Watch
from vggt.infer.inputs import (
    check_points_inside,
    content_boxes,
    find_images,
    load_frames,
    padded_shape,
    prepare_output_folder,
    read_plans,
    read_query_points,
)
from vggt.infer.memory_check import (
    RunShape,
    check_memory,
    device_rates,
    dry_run_report,
    format_seconds,
    plan_memory,
    usable_memory,
)
from vggt.infer.options import parse_options
from vggt.infer.ranks import Ranks
from vggt.infer.report import info, peak_memory, peak_memory_kind, summary_line
from vggt.memory.device_rates import rates_for
from vggt.memory.timing import forward_time
from vggt.models.architecture import VGGT_1B, Architecture
from vggt.models.vggt_vram_optimized import VGGTOptimized
from vggt.parallel.group import rank_slice, split_evenly, starts
from vggt.parallel.launch import Launch
from vggt.parallel.sequence import choose_attention
from vggt.utils.load_fn import ContentBox

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
FRAME_KEYS = ("depth", "depth_conf", "world_points", "world_points_conf")
# --single-writer: at most this many bytes of frames reach rank 0 in one round.
ROUND_BYTES = 512 * 2**20
Result = TypeVar("Result")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; 0 on success, 2 for bad input (one line on stderr), 1 when a
    rank fails or stops, 130 when interrupted."""
    options = parse_options(argv)
    if options.dry_run:
        try:
            print(dry_run(options))
        except InputError as error:
            print(f"vggt.infer: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0
    launch = Launch.from_environment()
    watches: list[Watch] = []
    try:
        run(options, launch, watches)
    except InputError as error:
        if launch.world_size == 1 or error.agreed:
            if launch.rank == 0:
                print(f"vggt.infer: {error}", file=sys.stderr)
        else:
            print(f"vggt.infer: rank {launch.rank}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"vggt.infer: rank {launch.rank} interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if not watches:
            raise
        traceback.print_exc()
        watches[0].failed(error)
    return 0


def run(options: argparse.Namespace, launch: Launch, watches: list[Watch] | None = None) -> None:
    """The whole run on this rank; InputError for bad input, before any model work. With
    several ranks a `Watch` starts just before the process group (appended to `watches`, for
    the caller to hand it any exception) and is told when this rank is done."""
    started = time.perf_counter()
    paths = frames_for(options.images, launch.world_size)
    points = read_query_points(options.query_points) if options.query_points else None
    checkpoint = resolve_checkpoint(options.checkpoint, options.config)
    attention = attention_for(
        options, checkpoint.architecture, launch.world_size, launch.local_world_size
    )
    if points is not None and not checkpoint.config.get("enable_track", True):
        raise InputError(f"the model of {checkpoint.config_source} has no track head")
    weights = read_weights(checkpoint)
    if options.single_writer:
        # Rank 0 alone prepares it, once the ranks are up, so that the others hear of a problem.
        out = Path(options.out).expanduser()
    else:
        out = prepare_output_folder(options.out)
    step = forward_time(
        checkpoint.architecture,
        len(paths),
        options.size,
        options.size,
        options.precision,
        launch.world_size,
        attention,
        ranks_per_node=launch.local_world_size,
        rates=device_rates(torch.device(options.device)),
    ).global_block_seconds
    watch = None
    if launch.world_size > 1:
        watch = Watch(launch.rank, launch.world_size, options.timeout)
        if watches is not None:
            watches.append(watch)
    ranks = Ranks(launch, options.device, collective_timeout(options.timeout, step))
    if watch is not None:
        watch.attach(dist.distributed_c10d._get_default_store())
    try:
        run_on_ranks(options, ranks, out, paths, points, checkpoint, weights, attention, started)
    except InputError as error:
        # Once the ranks are up, every problem is found by all of them together.
        error.agreed = True
        ranks.close()
        raise
    if watch is not None:
        watch.finish()
    ranks.close()


def run_on_ranks(
    options: argparse.Namespace,
    ranks: Ranks,
    out: Path,
    paths: list[Path],
    points: np.ndarray | None,
    checkpoint: Checkpoint,
    weights: Mapping[str, torch.Tensor],
    attention: str,
    started: float,
) -> None:
    """The run once the ranks are up: the same images on every rank, the output folder shared
    (or, with --single-writer, prepared by rank 0 alone), headers and this rank's frames (a
    problem any rank finds is raised on all), the memory check, the model, the forward and the
    files."""
    ranks.agree(different_inputs(ranks.all_gather(inputs_fingerprint(paths))))
    # Every rank's launcher agreed on the nodes (or not): the attention for the known topology.
    attention = attention_for(
        options, checkpoint.architecture, ranks.world_size, ranks.ranks_per_node
    )
    if options.single_writer:
        _agreed(ranks, lambda: prepare_output_folder(options.out) if ranks.is_first else None)
    else:
        ranks.agree(unshared_folder(ranks, out))
    plans = _agreed(ranks, lambda: read_plans(paths, options.mode, options.size))
    boxes, shape = content_boxes(plans), padded_shape(plans)
    if points is not None:
        check_points_inside(points, boxes[0])
    counts = split_evenly(len(paths), ranks.world_size)
    mine = rank_slice(counts, ranks.rank)
    images = _agreed(ranks, lambda: load_frames(paths[mine], options.mode, options.size, shape))
    run = RunShape(
        len(paths),
        ranks.world_size,
        *shape,
        checkpoint.architecture,
        options.precision,
        attention,
        options.offload,
        0 if points is None else len(points),
        ranks.ranks_per_node,
    )
    estimate = check_memory(options, ranks, run)
    model = prepare_model(checkpoint, weights, options, ranks, attention)
    if ranks.is_first and not options.quiet and len({plan.shape for plan in plans}) > 1:
        info(f"frames of different sizes padded to {shape[0]}x{shape[1]}, outputs cut back")
    predicted = None if estimate is None else estimate["forward"]["seconds"]
    predictions = predict(model, images, points, boxes[0], options, ranks, predicted)
    if options.single_writer:
        write_frames_on_first(out, predictions, counts, boxes, ranks)
    else:
        outputs.write_frames(out, predictions, mine.start, boxes)
    write_sequence_files(out, predictions, counts, shape, boxes, ranks)
    peaks = ranks.all_gather(peak_memory(ranks.device))
    communication = ranks.all_gather(ranks.communication())
    if ranks.is_first:
        seconds = time.perf_counter() - started
        facts = {
            "frames_per_rank": counts,
            "input_shape": list(shape),
            "content_boxes": [[b.top, b.left, b.height, b.width] for b in boxes],
            "attention": attention,
            "communication_per_rank": communication,
            "checkpoint": {"weights": str(checkpoint.weights), "config": checkpoint.config_source},
            "estimate": estimate,
        }
        outputs.write_run(out, run_document(options, paths, ranks, peaks, seconds, facts))
        if not options.quiet:
            print(summary_line(len(paths), peaks, ranks.device, seconds, str(out)), flush=True)


def run_document(
    options: argparse.Namespace,
    paths: list[Path],
    ranks: Ranks,
    peaks: list[int],
    seconds: float,
    facts: dict,
) -> dict:
    """run.json: frames, names in order, world size, options, peak memory per rank, seconds,
    and `facts` of the run (split, input shape, content boxes, attention, ...)."""
    return {
        "frames": len(paths),
        "names": [str(path) for path in paths],
        "world_size": ranks.world_size,
        "options": {**vars(options), "precision": options.precision.label},
        "precision": options.precision.label,
        "peak_memory_bytes": peaks,
        "peak_memory_kind": peak_memory_kind(ranks.device),
        "seconds": seconds,
        **facts,
    }


def collective_timeout(timeout_s: float, step_s: float) -> float:
    """The process group's timeout: --timeout, or three predicted longest steps between two
    exchanges when that is longer, so that NCCL's watchdog never takes a slow, healthy step
    for a hang."""
    return max(timeout_s, 3 * step_s)


def inputs_fingerprint(paths: Sequence[Path]) -> str:
    """A hash of the frames' names and sizes in order: equal on ranks that read the same
    images."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
    return digest.hexdigest()


def different_inputs(fingerprints: Sequence[str]) -> str | None:
    """The problem when ranks found different images (names, sizes or order), or None."""
    others = [rank for rank, found in enumerate(fingerprints) if found != fingerprints[0]]
    if not others:
        return None
    return (
        f"ranks {others} found other images than rank 0 (names, sizes or order differ): give "
        "every rank the same IMAGES"
    )


def unshared_folder(ranks: Ranks, out: Path) -> str | None:
    """The problem when a file rank 0 writes in `out` is not visible to every rank (no shared
    filesystem: each node would hold only its own frames), or None."""
    if ranks.world_size == 1:
        return None
    marker = out / f".vggt-infer-shared-{ranks.all_gather(secrets.token_hex(8))[0]}"
    if ranks.is_first:
        marker.touch()
    ranks.barrier()
    blind = [rank for rank, seen in enumerate(ranks.all_gather(marker.exists())) if not seen]
    ranks.barrier()
    if ranks.is_first:
        marker.unlink(missing_ok=True)
    if not blind:
        return None
    return (
        f"the output folder {out} is not shared: ranks {blind} cannot see a file rank 0 wrote "
        "there; use a folder on a filesystem every node mounts"
    )


def _agreed(ranks: Ranks, work: Callable[[], Result]) -> Result:
    """`work()`, with its InputError raised on every rank (and another rank's on this one)."""
    result, problem = None, None
    try:
        result = work()
    except InputError as error:
        problem = str(error)
    ranks.agree(problem)
    return result


def frames_for(images: Sequence[str], world_size: int) -> list[Path]:
    """The frames IMAGES name; InputError when there are fewer than ranks."""
    paths = find_images(images)
    if len(paths) < world_size:
        raise InputError(
            f"{len(paths)} frames for {world_size} ranks: use at most as many ranks as frames"
        )
    return paths


def attention_for(
    options: argparse.Namespace,
    architecture: Architecture,
    world_size: int,
    ranks_per_node: int | None = None,
) -> str:
    """--attention, or the rule's default for `world_size` ranks, `ranks_per_node` on each node
    (`choose_attention`); InputError for a split the heads or nodes do not allow."""
    try:
        return choose_attention(
            options.attention, world_size, architecture.num_heads, ranks_per_node
        )
    except ValueError as error:
        raise InputError(f"{error} (--attention ring)") from None


def dry_run(options: argparse.Namespace) -> str:
    """What --dry-run prints: the images' sizes read, no weights loaded, nothing run; the
    architecture from --config, else VGGT-1B's."""
    paths = frames_for(options.images, options.world_size)
    points = read_query_points(options.query_points) if options.query_points else None
    config = read_config(options.config) if options.config else {}
    architecture = VGGT_1B.with_config(config)
    plans = read_plans(paths, options.mode, options.size)
    if points is not None:
        check_points_inside(points, content_boxes(plans)[0])
    memory = options.device_memory
    if memory is None and options.device == "cuda" and torch.cuda.is_available():
        memory = usable_memory(torch.device("cuda", torch.cuda.current_device()))
    run = RunShape(
        len(paths),
        options.world_size,
        *padded_shape(plans),
        architecture,
        options.precision,
        attention_for(options, architecture, options.world_size, options.ranks_per_node),
        options.offload,
        0 if points is None else len(points),
        options.ranks_per_node,
    )
    gpu = options.gpu
    if gpu is None and options.device == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name()
    return dry_run_report(plan_memory(run, memory, rates=rates_for(gpu)), options.json)


def prepare_model(
    checkpoint: Checkpoint,
    weights: Mapping[str, torch.Tensor],
    options: argparse.Namespace,
    ranks: Ranks,
    attention: str,
) -> VGGTOptimized:
    """The checkpoint's model on this rank's device in the run's precision, its depth and point
    predictions put in host memory, split over the ranks when there are several."""
    model = options.precision.apply(build_model(checkpoint, weights, options.offload))
    model = model.to(ranks.device)
    # The frames' depth and point maps are written from the host: they go there chunk by chunk.
    model.predictions_device = torch.device("cpu")
    if ranks.group is not None:
        model.parallelize(ranks.group, attention)
    return model


def predict(
    model: VGGTOptimized,
    images: torch.Tensor,
    points: np.ndarray | None,
    first_box: ContentBox,
    options: argparse.Namespace,
    ranks: Ranks,
    predicted_s: float | None = None,
) -> dict:
    """This rank's predictions (batch 1), with rank 0's progress bar over blocks and heads
    (its description names the predicted forward time). Query points, given in the first
    frame's own pixels, move into the padded input."""
    query = None
    if points is not None:
        shifted = points + np.array([first_box.left, first_box.top], dtype=np.float32)
        query = torch.from_numpy(shifted).to(ranks.device)
    show = ranks.is_first and not options.quiet
    bar = tqdm(
        total=model.progress_steps(images.shape[0]),
        desc=f"vggt.infer ({images.shape[0]} frames on rank 0"
        + ("" if predicted_s is None else f", predicted {format_seconds(predicted_s)}")
        + ")",
        unit="step",
        disable=not show,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    model.progress = bar.update
    try:
        with torch.no_grad(), options.precision.autocast(ranks.device.type):
            return model(images.to(ranks.device), query_points=query)
    finally:
        model.progress = None
        bar.close()


def write_sequence_files(
    out: Path,
    predictions: dict,
    counts: list[int],
    shape: tuple[int, int],
    boxes: list[ContentBox],
    ranks: Ranks,
) -> None:
    """Every rank's cameras (and tracks) gathered on rank 0, which writes cameras.npz (and
    tracks.npz)."""
    poses = ranks.gather_frames(predictions["pose_enc"], counts)
    tracks = {}
    if "track" in predictions:
        for name in ("track", "vis", "conf"):
            if predictions.get(name) is not None:
                tracks[name] = ranks.gather_frames(predictions[name], counts)
    if not ranks.is_first:
        return
    outputs.write_cameras(out, outputs.camera_arrays(poses[0], shape, boxes))
    if tracks:
        conf = tracks["conf"][0] if "conf" in tracks else None
        arrays = outputs.track_arrays(tracks["track"][0], tracks["vis"][0], conf, boxes)
        outputs.write_tracks(out, arrays)


def frames_per_round(budget_bytes: int, world_size: int, frame_bytes: int) -> int:
    """Frames each rank sends rank 0 in one round, so that rank 0 receives at most
    `budget_bytes` of frames of `frame_bytes` each from the `world_size` ranks; at least one."""
    return max(1, budget_bytes // (world_size * frame_bytes))


def write_frames_on_first(
    out: Path,
    predictions: dict,
    counts: list[int],
    boxes: list[ContentBox],
    ranks: Ranks,
    budget_bytes: int = ROUND_BYTES,
) -> None:
    """--single-writer: every rank's frames (`counts` per rank) gathered on rank 0 in rounds
    of at most `budget_bytes` (but a frame from each rank), each round's written by rank 0
    before the next starts; every rank takes part in every round, with no frames once its own
    are all sent."""
    frame_bytes = sum(predictions[key][0, 0].nbytes for key in FRAME_KEYS)
    step = frames_per_round(budget_bytes, ranks.world_size, frame_bytes)
    for begin in range(0, max(counts), step):
        sizes = [min(step, max(0, count - begin)) for count in counts]
        ours = {key: predictions[key][:, begin : begin + step] for key in FRAME_KEYS}
        received = {key: ranks.gather_frames(frames, sizes) for key, frames in ours.items()}
        if not ranks.is_first:
            continue
        offset = 0
        for start, size in zip(starts(counts), sizes, strict=True):
            pieces = {key: frames[:, offset : offset + size] for key, frames in received.items()}
            outputs.write_frames(out, pieces, start + begin, boxes)
            offset += size
