"""Property tests for vggt.utils rotation, pose-encoding and geometry helpers."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from vggt.utils.geometry import (
    closed_form_inverse_se3,
    depth_to_cam_coords_points,
    depth_to_world_coords_points,
    unproject_depth_map_to_point_map,
)
from vggt.utils.pose_enc import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri
from vggt.utils.rotation import mat_to_quat, quat_to_mat

unit_floats = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, allow_infinity=False)
quaternions = st.tuples(unit_floats, unit_floats, unit_floats, unit_floats).filter(
    lambda q: math.fsum(c * c for c in q) > 1e-2
)
axes = st.tuples(unit_floats, unit_floats, unit_floats).filter(
    lambda a: math.fsum(c * c for c in a) > 1e-2
)
angles = st.floats(min_value=-math.pi, max_value=math.pi, allow_nan=False)
translations = st.tuples(*[st.floats(-10.0, 10.0, allow_nan=False)] * 3)


def assert_close(actual: object, expected: object, atol: float = 1e-6, rtol: float = 0.0) -> None:
    """Element-wise closeness via NumPy (torch.testing's first call is slow under deadlines)."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), atol=atol, rtol=rtol)


def rodrigues(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    """Rotation of ``angle`` radians about ``axis`` via R = I + sin(t) K + (1 - cos(t)) K^2."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def axis_angle_quat(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    """Unit xyzw quaternion of the rotation of ``angle`` radians about ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    return np.concatenate([a * math.sin(angle / 2), [math.cos(angle / 2)]])


def assert_same_rotation_quat(q: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Quaternions q and -q encode one rotation: accept either sign."""
    err = torch.minimum((q - expected).abs().amax(-1), (q + expected).abs().amax(-1))
    assert float(err.max()) < atol


@given(quaternions)
def test_quat_mat_quat_round_trip(q_tuple: tuple[float, float, float, float]) -> None:
    q = torch.tensor(q_tuple, dtype=torch.float64)
    q_unit = q / q.norm()
    rot = quat_to_mat(q)
    assert rot.shape == (3, 3)
    assert_close(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert abs(float(torch.linalg.det(rot)) - 1.0) < 1e-10
    q_back = mat_to_quat(rot)
    assert q_back.shape == (4,)
    assert float(q_back[3]) >= 0.0
    assert abs(float(q_back.norm()) - 1.0) < 1e-9
    assert_same_rotation_quat(q_back, q_unit, atol=1e-9)


@given(axes, angles)
def test_mat_quat_mat_round_trip(axis: tuple[float, float, float], angle: float) -> None:
    rot = torch.from_numpy(rodrigues(axis, angle))
    q = mat_to_quat(rot)
    assert float(q[3]) >= 0.0
    assert_close(quat_to_mat(q), rot, atol=1e-10)


@given(axes, angles, st.floats(min_value=0.1, max_value=10.0))
def test_quat_to_mat_matches_rodrigues(
    axis: tuple[float, float, float], angle: float, scale: float
) -> None:
    expected = torch.from_numpy(rodrigues(axis, angle))
    q = torch.from_numpy(axis_angle_quat(axis, angle))
    assert_close(quat_to_mat(q), expected, atol=1e-10)
    assert_close(quat_to_mat(q * scale), expected, atol=1e-10)
    assert_same_rotation_quat(mat_to_quat(expected), q, atol=1e-9)


def test_mat_to_quat_known_values() -> None:
    assert mat_to_quat(torch.eye(3)).tolist() == [0.0, 0.0, 0.0, 1.0]
    half_turn_x = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    assert mat_to_quat(half_turn_x).tolist() == [1.0, 0.0, 0.0, 0.0]
    batch = torch.eye(3).expand(2, 5, 3, 3)
    assert mat_to_quat(batch).shape == (2, 5, 4)


def test_mat_to_quat_gradient_is_finite_at_identity() -> None:
    rot = torch.eye(3, dtype=torch.float64, requires_grad=True)
    mat_to_quat(rot).sum().backward()
    assert torch.isfinite(rot.grad).all()


def test_rotation_shape_errors() -> None:
    with pytest.raises(ValueError):
        mat_to_quat(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError):
        mat_to_quat(torch.zeros(3))
    with pytest.raises(ValueError):
        quat_to_mat(torch.zeros(2, 3))


def test_rotation_under_fake_tensor_mode() -> None:
    with FakeTensorMode() as mode:
        matrix = mode.from_tensor(torch.randn(2, 5, 3, 3))
        quat = mat_to_quat(matrix)
        assert quat.shape == (2, 5, 4)
        assert quat_to_mat(quat).shape == (2, 5, 3, 3)
        graded = mode.from_tensor(torch.randn(3, 3, 3).requires_grad_())
        assert mat_to_quat(graded).shape == (3, 4)


@st.composite
def cameras(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Random (B, S, 3, 4) extrinsics, (B, S, 3, 3) centred intrinsics and an image size."""
    b = draw(st.integers(1, 2))
    s = draw(st.integers(1, 3))
    height = draw(st.integers(14, 1000))
    width = draw(st.integers(14, 1000))
    extrinsics = torch.zeros(b, s, 3, 4, dtype=torch.float64)
    intrinsics = torch.zeros(b, s, 3, 3, dtype=torch.float64)
    for bi in range(b):
        for si in range(s):
            rot = rodrigues(draw(axes), draw(angles))
            extrinsics[bi, si, :, :3] = torch.from_numpy(rot)
            extrinsics[bi, si, :, 3] = torch.tensor(draw(translations))
            intrinsics[bi, si, 0, 0] = draw(st.floats(50.0, 2000.0))
            intrinsics[bi, si, 1, 1] = draw(st.floats(50.0, 2000.0))
    intrinsics[..., 0, 2] = width / 2
    intrinsics[..., 1, 2] = height / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics, (height, width)


@given(cameras())
def test_pose_encoding_round_trip(
    camera: tuple[torch.Tensor, torch.Tensor, tuple[int, int]],
) -> None:
    extrinsics, intrinsics, image_hw = camera
    encoding = extri_intri_to_pose_encoding(extrinsics, intrinsics, image_size_hw=image_hw)
    assert encoding.dtype == torch.float32
    assert encoding.shape == (*extrinsics.shape[:2], 9)
    assert (encoding[..., 6] >= 0).all()
    extr_back, intr_back = pose_encoding_to_extri_intri(encoding, image_size_hw=image_hw)
    assert extr_back.shape == extrinsics.shape
    assert intr_back is not None
    assert intr_back.dtype == torch.float32
    assert_close(extr_back.double(), extrinsics, atol=1e-5, rtol=1e-5)
    assert_close(intr_back.double(), intrinsics, atol=1e-3, rtol=1e-5)
    extr_only, none = pose_encoding_to_extri_intri(encoding, build_intrinsics=False)
    assert none is None
    assert_close(extr_only, extr_back)


def test_pose_encoding_fov_value() -> None:
    extrinsics = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=-1).expand(1, 1, 3, 4)
    intrinsics = torch.tensor([[100.0, 0.0, 50.0], [0.0, 50.0, 25.0], [0.0, 0.0, 1.0]])
    encoding = extri_intri_to_pose_encoding(
        extrinsics, intrinsics.expand(1, 1, 3, 3), image_size_hw=(50, 100)
    )
    expected_fov = 2 * math.atan(0.5)
    assert_close(encoding[0, 0, 7:], torch.full((2,), expected_fov))
    assert_close(encoding[0, 0, 3:7], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_pose_encoding_rejects_other_types() -> None:
    extrinsics = torch.zeros(1, 1, 3, 4)
    intrinsics = torch.eye(3).expand(1, 1, 3, 3)
    with pytest.raises(ValueError, match="relT_quaR_FoV"):
        extri_intri_to_pose_encoding(extrinsics, intrinsics, (14, 14), "relT_quaR_FoV")
    with pytest.raises(ValueError, match="absT_quaR_FL"):
        pose_encoding_to_extri_intri(torch.zeros(1, 1, 9), (14, 14), "absT_quaR_FL")


@st.composite
def se3_batches(draw: st.DrawFn) -> np.ndarray:
    """A random (N, 4, 4) batch of rigid transforms in float64."""
    n = draw(st.integers(1, 4))
    se3 = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        se3[i, :3, :3] = rodrigues(draw(axes), draw(angles))
        se3[i, :3, 3] = draw(translations)
    return se3


@given(se3_batches(), st.booleans())
def test_closed_form_inverse_se3(se3: np.ndarray, three_by_four: bool) -> None:
    given_se3 = se3[:, :3, :] if three_by_four else se3
    identity = np.tile(np.eye(4), (se3.shape[0], 1, 1))

    inverse_np = closed_form_inverse_se3(given_se3)
    assert isinstance(inverse_np, np.ndarray)
    assert inverse_np.shape == se3.shape
    np.testing.assert_allclose(inverse_np @ se3, identity, atol=1e-10)
    np.testing.assert_allclose(se3 @ inverse_np, identity, atol=1e-10)

    inverse_t = closed_form_inverse_se3(torch.from_numpy(given_se3).float())
    assert isinstance(inverse_t, torch.Tensor)
    assert inverse_t.dtype == torch.float32
    np.testing.assert_allclose(inverse_t.double().numpy() @ se3, identity, atol=1e-5)


def test_closed_form_inverse_se3_rejects_bad_shape() -> None:
    with pytest.raises(ValueError):
        closed_form_inverse_se3(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError):
        closed_form_inverse_se3(torch.zeros(4, 4))


def test_depth_to_cam_coords_hand_computed() -> None:
    depth = np.full((4, 6), 3.0)
    intrinsic = np.array([[2.0, 0.0, 2.5], [0.0, 4.0, 1.5], [0.0, 0.0, 1.0]])
    points = depth_to_cam_coords_points(depth, intrinsic)
    assert points.shape == (4, 6, 3)
    assert points.dtype == np.float32
    # Pixel (u=5, v=0): x = (5 - 2.5) * 3 / 2, y = (0 - 1.5) * 3 / 4.
    np.testing.assert_allclose(points[0, 5], [3.75, -1.125, 3.0])
    with pytest.raises(ValueError):
        depth_to_cam_coords_points(depth, np.array([[2.0, 0.1, 2.5], [0, 4, 1.5], [0, 0, 1]]))


@given(
    st.floats(min_value=0.1, max_value=100.0),
    st.integers(1, 12),
    st.integers(1, 12),
    st.floats(min_value=1.0, max_value=500.0),
    st.floats(min_value=1.0, max_value=500.0),
)
def test_constant_depth_plane_identity_extrinsic(
    depth: float, height: int, width: int, fx: float, fy: float
) -> None:
    cx, cy = width / 2, height / 2
    intrinsic = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    extrinsic = np.hstack([np.eye(3), np.zeros((3, 1))])
    depth_map = np.full((height, width), depth)
    world, cam, mask = depth_to_world_coords_points(depth_map, extrinsic, intrinsic)
    assert world.shape == cam.shape == (height, width, 3)
    assert mask.all()
    np.testing.assert_allclose(world[..., 2], depth, rtol=1e-6)
    u, v = width - 1, height - 1
    expected_xy = [(u - cx) * depth / fx, (v - cy) * depth / fy]
    np.testing.assert_allclose(world[v, u, :2], expected_xy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(world, cam, rtol=1e-6, atol=1e-6)


@given(se3_batches(), st.floats(min_value=0.5, max_value=20.0))
def test_unproject_depth_map_inverts_extrinsics(se3: np.ndarray, depth: float) -> None:
    frames, height, width = se3.shape[0], 3, 5
    extrinsics = torch.from_numpy(se3[:, :3, :]).float()
    intrinsics = torch.tensor([[4.0, 0.0, 2.0], [0.0, 3.0, 1.5], [0.0, 0.0, 1.0]])
    intrinsics = intrinsics.expand(frames, 3, 3)
    depth_map = torch.full((frames, height, width, 1), depth)
    world = unproject_depth_map_to_point_map(depth_map, extrinsics, intrinsics)
    assert isinstance(world, np.ndarray)
    assert world.shape == (frames, height, width, 3)
    # Mapping the world points back through camera-from-world must give z == depth.
    cam = np.einsum("sij,shwj->shwi", se3[:, :3, :3], world) + se3[:, None, None, :3, 3]
    np.testing.assert_allclose(cam[..., 2], depth, rtol=1e-4, atol=1e-4)
    squeezed = unproject_depth_map_to_point_map(depth_map[..., 0], extrinsics, intrinsics)
    np.testing.assert_array_equal(squeezed, world)


def test_depth_to_world_none_depth() -> None:
    assert depth_to_world_coords_points(None, np.eye(4)[:3], np.eye(3)) == (None, None, None)


def test_pose_encoding_requires_image_size() -> None:
    with pytest.raises(ValueError):
        extri_intri_to_pose_encoding(torch.zeros(1, 1, 3, 4), torch.eye(3).expand(1, 1, 3, 3))
