"""Camera, geometry and image-loading utilities."""

from vggt.utils.geometry import (
    closed_form_inverse_se3,
    depth_to_cam_coords_points,
    depth_to_world_coords_points,
    unproject_depth_map_to_point_map,
)
from vggt.utils.load_fn import load_and_preprocess_images, load_and_preprocess_images_square
from vggt.utils.pose_enc import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri
from vggt.utils.rotation import mat_to_quat, quat_to_mat

__all__ = [
    "closed_form_inverse_se3",
    "depth_to_cam_coords_points",
    "depth_to_world_coords_points",
    "extri_intri_to_pose_encoding",
    "load_and_preprocess_images",
    "load_and_preprocess_images_square",
    "mat_to_quat",
    "pose_encoding_to_extri_intri",
    "quat_to_mat",
    "unproject_depth_map_to_point_map",
]
