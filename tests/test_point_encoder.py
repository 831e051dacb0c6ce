"""The DP3-style point encoder (order invariance) and point clouds in ObsConditioner, for every head."""

from __future__ import annotations

import pytest
import torch

from robopolicy.nn import ImageEncoderConfig, unet_preset
from robopolicy.nn.point_encoder import PointEncoder, PointEncoderConfig
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.obs_conditioning import ObsConditioner, ObsEncoderConfig
from robopolicy.policies.registry import make_policy

torch.set_num_threads(1)


@pytest.mark.parametrize("channels", [3, 6])
def test_encoder_is_invariant_to_point_order_and_duplicates(channels):
    torch.manual_seed(0)
    enc = PointEncoder(channels, PointEncoderConfig(hidden=[32, 64], feature_dim=16)).eval()
    pts = torch.randn(4, 100, channels)
    out = enc(pts)
    assert out.shape == (4, 16)
    perm = torch.stack([torch.randperm(100) for _ in range(4)])
    shuffled = torch.gather(pts, 1, perm[..., None].expand(-1, -1, channels))
    assert torch.allclose(enc(shuffled), out, atol=1e-6)
    doubled = torch.cat([pts, pts[:, :30]], dim=1)  # repeated points (padding) change nothing
    assert torch.allclose(enc(doubled), out, atol=1e-6)
    other = pts.clone()
    other[:, 0, :3] += 5.0  # but moving a point does
    assert not torch.allclose(enc(other), out, atol=1e-3)
    with pytest.raises(ValueError, match="channels"):
        PointEncoder(4)
    with pytest.raises(ValueError, match=r"\(\.\.\., N, 3\)"):
        PointEncoder(3)(torch.randn(2, 10, 6))


def _spec(**obs) -> PolicySpec:
    return PolicySpec(obs_shapes=obs, action_dim=3, n_obs_steps=2, horizon=8, n_action_steps=4)


def test_conditioner_takes_pointclouds_images_state_by_keys_alone():
    cfg = ObsEncoderConfig(point=PointEncoderConfig(hidden=[16, 32], feature_dim=24),
                           image=ImageEncoderConfig(width=8, blocks_per_stage=[1, 1, 1, 1], group_size=4,
                                                    feature_dim=10))
    both = ObsConditioner(_spec(pointcloud=(50, 6), **{"images/front": (3, 64, 64)}, state=(5,)), cfg)
    assert both.out_dim == 2 * (24 + 10 + 5)
    obs = {"pointcloud": torch.randn(3, 2, 50, 6), "images/front": torch.rand(3, 2, 3, 64, 64),
           "state": torch.randn(3, 2, 5)}
    assert both(obs).shape == (3, both.out_dim)
    only_points = ObsConditioner(_spec(pointcloud=(50, 3), state=(5,)), cfg)
    assert only_points.out_dim == 2 * (24 + 5) and not only_points.image_encoders
    perm = torch.randperm(50)
    pc = torch.randn(3, 2, 50, 3)
    st = torch.randn(3, 2, 5)
    only_points.eval()
    assert torch.allclose(only_points({"pointcloud": pc, "state": st}),
                          only_points({"pointcloud": pc[:, :, perm], "state": st}), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 3\) or \(N, 6\)"):
        ObsConditioner(_spec(pointcloud=(50, 4)), cfg)
    with pytest.raises(ValueError, match="pointcloud"):
        only_points({"pointcloud": torch.randn(3, 2, 50), "state": st})


@pytest.mark.parametrize("head", ["flow", "diffusion", "meanflow", "consistency"])
def test_every_head_trains_from_pointclouds_by_config(head):
    torch.manual_seed(0)
    spec = _spec(pointcloud=(40, 3), state=(4,))
    cfg = {"unet": vars(unet_preset("tiny")), "obs": {"point": {"hidden": [16, 32], "feature_dim": 16}}}
    policy = make_policy(head, spec, cfg)
    if head == "consistency":  # a distilled head learns from a diffusion teacher on the same observations
        policy.set_teacher(make_policy("diffusion", spec, cfg).eval())
    # the target action is the centroid of the cloud: only learnable through the point encoder
    pc = torch.rand(4, 2, 40, 3) * 2 - 1
    action = pc[:, 0].mean(dim=1, keepdim=True).expand(-1, 8, -1).clone()
    batch = {"obs": {"pointcloud": pc, "state": torch.zeros(4, 2, 4)}, "action": action}
    loss = policy.compute_loss(batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in policy.obs_encoder.point_encoders.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        chunk = policy.eval().predict_chunk(batch["obs"], noise=torch.randn(4, 8, 3))
    assert chunk.shape == (4, 8, 3) and torch.isfinite(chunk).all()
