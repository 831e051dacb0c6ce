"""MJCF of the embedded scene, generated in Python so no package data file has to be found at run time.

The scene: a table whose top is the plane z = 0, a 6-DoF arm (base yaw, shoulder pitch, elbow pitch,
forearm roll, wrist pitch, tool roll; a spherical wrist) with a two-finger parallel gripper on it at the
origin, three coloured 4 cm blocks on free joints, a flat target disc (visual only), a fixed front camera
and a wrist camera. Rendering is made cheap on purpose (software GL renders 2 cameras at 96x96 in ~4 ms):
no shadows, reflections or multisampling, coarse capsule tessellation, and a finite floor with a coarse
render grid (an infinite plane is drawn as thousands of quads, which tripled the render time).
"""

from __future__ import annotations

import numpy as np

BLOCK_HALF = 0.02  # m, half the edge of a block
BLOCK_COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.12, 0.70, 0.20),
    "blue": (0.12, 0.25, 0.85),
}
TARGET_RADIUS = 0.05  # m
FINGER_MAX = 0.04  # m, travel of one finger; the gripper opens to 2 * FINGER_MAX
ARM_JOINTS = ("j1", "j2", "j3", "j4", "j5", "j6")
# Joint ranges in degrees, in ARM_JOINTS order.
JOINT_RANGES_DEG = ((-170, 170), (-110, 110), (-160, 160), (-175, 175), (-125, 125), (-175, 175))
# Position-servo gains per joint (N m / rad); the links are gravity-compensated, so the gains only fight
# inertia and contact forces.
JOINT_KP = (600.0, 600.0, 500.0, 150.0, 150.0, 80.0)


def look_at_xyaxes(pos: np.ndarray, target: np.ndarray, up: np.ndarray) -> str:
    """The MJCF `xyaxes` of a camera at `pos` looking at `target` with image-up close to `up`."""
    fwd = np.asarray(target, float) - np.asarray(pos, float)
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, fwd)
    return " ".join(f"{v:.6f}" for v in (*right, *cam_up))


def _fmt(v: tuple[float, ...] | np.ndarray) -> str:
    return " ".join(f"{float(x):.6g}" for x in v)


def _block_xml(name: str, rgb: tuple[float, float, float], x: float) -> str:
    h = BLOCK_HALF
    return f"""
    <body name="block_{name}" pos="{x} 0 {h}">
      <freejoint name="block_{name}_joint"/>
      <geom name="block_{name}" type="box" size="{h} {h} {h}" mass="0.05" rgba="{_fmt(rgb)} 1"
            friction="1.0 0.01 0.001" condim="4" priority="1"/>
    </body>"""


def build_scene_xml() -> str:
    """The whole scene as an MJCF string (compiled with `mujoco.MjModel.from_xml_string`)."""
    # Front camera facing the robot, high enough to see the arm, the gripper and the whole spawn area.
    front_pos = np.array([1.15, 0.0, 0.75])
    front_axes = look_at_xyaxes(front_pos, np.array([0.38, 0.0, 0.15]), np.array([0.0, 0.0, 1.0]))
    # Wrist camera in the tool frame (z along the fingers). With the gripper pointing down at zero yaw the
    # tool x axis points back at the robot, so the camera sits on that side and image-up is tool -x
    # ("away from the robot").
    wrist_pos = np.array([0.07, 0.0, 0.02])
    wrist_axes = look_at_xyaxes(wrist_pos, np.array([0.0, 0.0, 0.16]), np.array([-1.0, 0.0, 0.0]))
    ranges = [f"{lo} {hi}" for lo, hi in JOINT_RANGES_DEG]
    actuators = "\n".join(
        f'    <position name="a_{j}" joint="{j}" kp="{kp}" dampratio="1" ctrlrange="{np.deg2rad(lo):.4f} '
        f'{np.deg2rad(hi):.4f}" forcerange="-150 150"/>'
        for j, kp, (lo, hi) in zip(ARM_JOINTS, JOINT_KP, JOINT_RANGES_DEG, strict=True)
    )
    blocks = "".join(_block_xml(n, c, 0.4 + 0.08 * i) for i, (n, c) in enumerate(BLOCK_COLORS.items()))
    return f"""
<mujoco model="robopolicy_embedded">
  <compiler angle="degree" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <quality shadowsize="0" offsamples="0" numslices="12" numstacks="6" numquads="1"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.55 0.55 0.55" specular="0 0 0"/>
    <map znear="0.01" zfar="12"/>
    <global offwidth="640" offheight="480"/>
  </visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.55 0.55 0.58" rgb2="0.5 0.5 0.53"
             width="64" height="64"/>
    <material name="floor" texture="grid" texrepeat="8 8" reflectance="0"/>
    <material name="table" rgba="0.72 0.60 0.45 1" reflectance="0"/>
    <material name="arm" rgba="0.88 0.88 0.90 1" reflectance="0"/>
    <material name="joint" rgba="0.25 0.27 0.30 1" reflectance="0"/>
    <material name="finger" rgba="0.15 0.15 0.17 1" reflectance="0"/>
  </asset>
  <default>
    <joint armature="0.05" damping="2"/>
    <geom solref="0.004 1" solimp="0.95 0.99 0.001"/>
    <default class="link">
      <geom material="arm" contype="1" conaffinity="1" group="1"/>
    </default>
  </default>
  <worldbody>
    <light name="top" pos="0.4 0 2.0" dir="0 0 -1" diffuse="0.5 0.5 0.5" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.5" material="floor"/>
    <geom name="table" type="box" pos="0.35 0 -0.375" size="0.6 0.65 0.375" material="table"
          friction="0.6 0.005 0.0001"/>
    <body name="target" pos="0.5 0.15 0">
      <geom name="target" type="cylinder" size="{TARGET_RADIUS} 0.0008" pos="0 0 0.0008"
            rgba="0.98 0.85 0.15 1" contype="0" conaffinity="0"/>
    </body>
    <camera name="front" pos="{_fmt(front_pos)}" xyaxes="{front_axes}" fovy="45"/>
    <body name="base" pos="0 0 0">
      <geom name="base" type="cylinder" size="0.07 0.04" pos="0 0 0.04" material="joint"/>
      <body name="link1" pos="0 0 0.08" gravcomp="1">
        <joint name="j1" axis="0 0 1" range="{ranges[0]}"/>
        <geom class="link" type="capsule" fromto="0 0 0 0 0 0.08" size="0.055"/>
        <body name="link2" pos="0 0 0.08" gravcomp="1">
          <joint name="j2" axis="0 1 0" range="{ranges[1]}"/>
          <geom type="cylinder" fromto="0 -0.06 0 0 0.06 0" size="0.05" material="joint"/>
          <geom class="link" type="capsule" fromto="0 0 0 0 0 0.40" size="0.045"/>
          <body name="link3" pos="0 0 0.40" gravcomp="1">
            <joint name="j3" axis="0 1 0" range="{ranges[2]}"/>
            <geom type="cylinder" fromto="0 -0.05 0 0 0.05 0" size="0.042" material="joint"/>
            <geom class="link" type="capsule" fromto="0 0 0 0 0 0.14" size="0.038"/>
            <body name="link4" pos="0 0 0.14" gravcomp="1">
              <joint name="j4" axis="0 0 1" range="{ranges[3]}"/>
              <geom class="link" type="capsule" fromto="0 0 0 0 0 0.24" size="0.034"/>
              <body name="link5" pos="0 0 0.24" gravcomp="1">
                <joint name="j5" axis="0 1 0" range="{ranges[4]}"/>
                <geom type="cylinder" fromto="0 -0.04 0 0 0.04 0" size="0.034" material="joint"/>
                <geom class="link" type="capsule" fromto="0 0 0 0 0 0.05" size="0.03"/>
                <body name="link6" pos="0 0 0.06" gravcomp="1">
                  <joint name="j6" axis="0 0 1" range="{ranges[5]}"/>
                  <geom type="cylinder" size="0.032 0.01" pos="0 0 0" material="joint"/>
                  <geom name="palm" type="box" size="0.022 0.055 0.012" pos="0 0 0.03" material="joint"/>
                  <site name="tcp" pos="0 0 0.10" size="0.005" rgba="1 0 1 0" group="4"/>
                  <camera name="wrist" pos="{_fmt(wrist_pos)}" xyaxes="{wrist_axes}" fovy="75"/>
                  <body name="finger_left" pos="0 0 0.042" gravcomp="1">
                    <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_MAX}"
                           damping="5" armature="0.01"/>
                    <geom name="finger_left" type="box" size="0.011 0.006 0.032" pos="0 0.006 0.04"
                          material="finger" friction="1.5 0.02 0.001" condim="4" priority="2" mass="0.03"/>
                  </body>
                  <body name="finger_right" pos="0 0 0.042" gravcomp="1">
                    <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_MAX}"
                           damping="5" armature="0.01"/>
                    <geom name="finger_right" type="box" size="0.011 0.006 0.032" pos="0 -0.006 0.04"
                          material="finger" friction="1.5 0.02 0.001" condim="4" priority="2" mass="0.03"/>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>{blocks}
  </worldbody>
  <contact>
    <exclude body1="base" body2="link1"/>
    <exclude body1="link6" body2="finger_left"/>
    <exclude body1="link6" body2="finger_right"/>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
  <actuator>
{actuators}
    <position name="a_finger_left" joint="finger_left" kp="300" dampratio="1" ctrlrange="0 {FINGER_MAX}"
              forcerange="-15 15"/>
    <position name="a_finger_right" joint="finger_right" kp="300" dampratio="1" ctrlrange="0 {FINGER_MAX}"
              forcerange="-15 15"/>
  </actuator>
</mujoco>
"""
