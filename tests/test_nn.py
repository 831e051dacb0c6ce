"""Shared networks: UNet shapes and horizon check, embeddings, image encoder crops, obs conditioning."""

from __future__ import annotations

import pytest
import torch

from robopolicy.nn import (
    IMAGE_ENCODER_PRESETS,
    ConditionalUnet1D,
    ImageEncoder,
    ImageEncoderConfig,
    SinusoidalEmbedding,
    SpatialSoftmax,
    unet_preset,
)
from robopolicy.nn.vision import crop_images
from robopolicy.policies.base import PolicySpec
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.obs_conditioning import ObsConditioner, ObsEncoderConfig, executed_slice

torch.set_num_threads(1)
CPU_IMAGE = ImageEncoderConfig(**IMAGE_ENCODER_PRESETS["cpu"], feature_dim=16, num_keypoints=8)


@pytest.mark.parametrize("down_dims,horizon", [([16, 32, 64], 16), ([16, 32, 64], 8), ([16, 32], 6), ([16], 3)])
def test_unet_output_shape(down_dims, horizon):
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=3, global_cond_dim=10, cfg=unet_preset("tiny", down_dims=down_dims))
    x = torch.randn(4, horizon, 3)
    out = net(x, torch.tensor([0, 5, 50, 99]), torch.randn(4, 10))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_unet_conditioning_reaches_output():
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=4, cfg=unet_preset("tiny"))
    x, cond = torch.randn(2, 8, 2), torch.randn(2, 4)
    base = net(x, torch.tensor([10, 10]), cond)
    assert not torch.allclose(base, net(x, torch.tensor([60, 60]), cond), atol=1e-4)  # step matters
    assert not torch.allclose(base, net(x, torch.tensor([10, 10]), cond + 1.0), atol=1e-4)  # FiLM condition matters
    # the whole horizon is computed jointly: changing one position changes others through the convolutions
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert not torch.allclose(base[:, -1], net(x2, torch.tensor([10, 10]), cond)[:, -1], atol=1e-6)


def test_unet_horizon_divisibility_error():
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=0, cfg=unet_preset("tiny", down_dims=[16, 32, 64]))
    with pytest.raises(ValueError, match=r"horizon 6 is not divisible by 2\*\*\(len\(down_dims\)-1\) = 4"):
        net(torch.randn(1, 6, 2), torch.tensor([1]))
    spec = PolicySpec(obs_shapes={"state": (3,)}, action_dim=2, horizon=10)
    with pytest.raises(ValueError, match="horizon 10 is not divisible"):
        DiffusionPolicy(spec, DiffusionPolicy.Config(unet=unet_preset("cpu")))


def test_unet_rejects_bad_inputs():
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=4, cfg=unet_preset("tiny"))
    with pytest.raises(ValueError, match="global_cond"):
        net(torch.randn(2, 8, 2), torch.tensor([1, 1]), torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(B, T, 2\)"):
        net(torch.randn(2, 8, 3), torch.tensor([1, 1]), torch.randn(2, 4))
    with pytest.raises(ValueError, match="n_groups"):
        ConditionalUnet1D(2, 4, unet_preset("tiny", down_dims=[12]))


def test_official_sizes():
    # 65 M parameters for the official low-dim UNet on a PushT-like spec (LeRobot's state model: 65 M).
    spec = PolicySpec(obs_shapes={"state": (20,)}, action_dim=2)
    n = sum(p.numel() for p in DiffusionPolicy(spec, DiffusionPolicy.Config(unet=unet_preset("lowdim"))).parameters())
    assert 60e6 < n < 70e6


def test_sinusoidal_embedding_integer_and_continuous():
    emb = SinusoidalEmbedding(32)
    out = emb(torch.arange(100))
    assert out.shape == (100, 32)
    assert torch.allclose(out[0, :16], torch.zeros(16)) and torch.allclose(out[0, 16:], torch.ones(16))
    # Continuous t in [0, 1]: unscaled features barely move; scaled by 1000 they separate like integer steps.
    t = torch.tensor([0.10, 0.11])
    raw = (emb(t)[0] - emb(t)[1]).norm()
    scaled_emb = SinusoidalEmbedding(32, scale=1000.0)
    scaled = (scaled_emb(t)[0] - scaled_emb(t)[1]).norm()
    assert scaled > 20 * raw
    assert torch.allclose(scaled_emb(torch.tensor([0.25])), emb(torch.tensor([250.0])), atol=1e-4)
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(7)


def test_spatial_softmax_finds_the_peak():
    ss = SpatialSoftmax(in_channels=1, num_keypoints=1)
    with torch.no_grad():
        ss.keypoints.weight.fill_(1.0)
        ss.keypoints.bias.zero_()
    fmap = torch.zeros(1, 1, 8, 10)
    fmap[0, 0, 2, 7] = 100.0  # row 2, column 7
    x, y = ss(fmap)[0].tolist()
    assert x == pytest.approx(-1 + 2 * 7 / 9, abs=1e-4) and y == pytest.approx(-1 + 2 * 2 / 7, abs=1e-4)


def test_crop_random_windows_and_center():
    img = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12).repeat(8, 1, 1, 1)
    center = crop_images(img, (6, 8), random=False)
    assert torch.equal(center, img[:, :, 2:8, 2:10])
    torch.manual_seed(0)
    rand = crop_images(img, (6, 8), random=True)
    offsets = set()
    for i in range(len(img)):
        # every crop is an exact window of its own image
        found = [(y, x) for y in range(5) for x in range(5) if torch.equal(rand[i], img[i, :, y:y + 6, x:x + 8])]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 1  # independent windows per image
    with pytest.raises(ValueError, match="larger"):
        crop_images(img, (11, 8), random=False)


def test_image_encoder_train_random_eval_center():
    torch.manual_seed(0)
    enc = ImageEncoder(ImageEncoderConfig(**{**CPU_IMAGE.__dict__, "crop_shape": [76, 76]}))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    assert enc.feature_map_size(96, 96) == (3, 3)
    x = torch.rand(3, 3, 96, 96)
    enc.eval()
    with torch.no_grad():
        e1, e2 = enc(x), enc(x)
        assert e1.shape == (3, 16)
        assert torch.equal(e1, e2)  # eval: fixed center crop
        # eval equals the network applied to the center window; images already at crop size pass through
        assert torch.allclose(e1, enc(x[:, :, 10:86, 10:86]), atol=1e-6)
        enc.train()
        t1, t2 = enc(x), enc(x)
    assert not torch.allclose(t1, t2)  # train: random crops
    with pytest.raises(TypeError, match="float"):
        enc((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="feature map"):
        enc.check_image_size(32, 32)


def test_obs_conditioner_multi_camera_fusion():
    spec = PolicySpec(
        obs_shapes={"state": (5,), "images/front": (3, 64, 64), "images/wrist": (3, 64, 64)},
        action_dim=2, n_obs_steps=2,
    )
    separate = ObsConditioner(spec, ObsEncoderConfig(image=CPU_IMAGE))
    shared = ObsConditioner(spec, ObsEncoderConfig(image=CPU_IMAGE, share_image_encoder=True))
    assert len(separate.image_encoders) == 2 and len(shared.image_encoders) == 1
    assert separate.out_dim == shared.out_dim == 2 * (2 * 16 + 5)
    obs = {"state": torch.randn(4, 2, 5), "images/front": torch.rand(4, 2, 3, 64, 64),
           "images/wrist": torch.rand(4, 2, 3, 64, 64)}
    separate.eval()
    out = separate(obs)
    assert out.shape == (4, separate.out_dim)
    # layout per frame: [front, wrist, state]; frames flattened in order
    assert torch.equal(out.reshape(4, 2, 37)[:, :, 32:], obs["state"])
    with torch.no_grad():
        front = separate.image_encoders["images__front"](obs["images/front"][:, 1])
    assert torch.allclose(out.reshape(4, 2, 37)[:, 1, :16], front, atol=1e-6)
    mlp = ObsConditioner(spec, ObsEncoderConfig(image=CPU_IMAGE, state_encoder="mlp", state_feature_dim=8))
    assert mlp.out_dim == 2 * (32 + 8)
    with pytest.raises(KeyError, match="missing"):
        separate({"state": obs["state"]})
    with pytest.raises(KeyError, match="not in the policy spec"):
        ObsConditioner(spec, ObsEncoderConfig(keys=["state", "images/top"]))


def test_executed_slice():
    spec = PolicySpec(obs_shapes={"state": (1,)}, action_dim=1, n_obs_steps=2, horizon=16, n_action_steps=8)
    assert executed_slice(spec) == slice(1, 9)


@pytest.mark.parametrize("c_in,c_out,k,stride,pad,t", [(3, 8, 5, 1, 2, 16), (16, 16, 3, 2, 1, 8), (8, 4, 1, 1, 0, 4),
                                                        (6, 6, 4, 1, 0, 9)])
def test_matmul_conv1d_matches_conv1d_forward_and_backward(c_in, c_out, k, stride, pad, t):
    from robopolicy.nn.conv1d import MatmulConv1d

    torch.manual_seed(0)
    ref = torch.nn.Conv1d(c_in, c_out, k, stride=stride, padding=pad)
    fast = MatmulConv1d(c_in, c_out, k, stride=stride, padding=pad)
    fast.load_state_dict(ref.state_dict())  # same parameters, same keys
    x1 = torch.randn(3, c_in, t, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = ref(x1), fast(x2)
    assert y1.shape == y2.shape
    torch.testing.assert_close(y2, y1, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("c_in,c_out,k,stride,pad,t", [(8, 8, 4, 2, 1, 4), (5, 3, 3, 1, 1, 7), (4, 6, 4, 2, 0, 3)])
def test_matmul_conv_transpose1d_matches_conv_transpose1d(c_in, c_out, k, stride, pad, t):
    from robopolicy.nn.conv1d import MatmulConvTranspose1d

    torch.manual_seed(0)
    ref = torch.nn.ConvTranspose1d(c_in, c_out, k, stride=stride, padding=pad)
    fast = MatmulConvTranspose1d(c_in, c_out, k, stride=stride, padding=pad)
    fast.load_state_dict(ref.state_dict())
    x1 = torch.randn(2, c_in, t, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = ref(x1), fast(x2)
    torch.testing.assert_close(y2, y1, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)


def test_int8_inference_weights_close_to_fp32_and_refuse_training():
    from robopolicy.nn.conv1d import dequantize_, quantize_int8_
    from robopolicy.nn.unet1d import ConditionalUnet1D, unet_preset

    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 6, unet_preset("tiny")).eval()
    x, step, cond = torch.randn(3, 8, 2), torch.tensor([5, 50, 90]), torch.randn(3, 6)
    with torch.no_grad():
        ref = net(x, step, cond)
        assert quantize_int8_(net) > 10
        q = net(x, step, cond)
    rel = ((q - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.05  # quantized, and close
    with pytest.raises(RuntimeError, match="dequantize_"):
        net.train()
        net(x, step, cond).sum()
    dequantize_(net)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x, step, cond), ref)


def test_load_with_int8_quantize_keeps_actions_close(tmp_path):
    """robopolicy.load(path, quantize='int8'): the UNet's layers get int8 weights, the actions stay close."""
    import numpy as np

    import robopolicy
    from robopolicy.data.normalizer import fit_normalizers
    from robopolicy.nn.unet1d import unet_preset
    from robopolicy.train.checkpoint import write_model_files

    torch.manual_seed(0)
    spec = PolicySpec(obs_shapes={"state": (3,)}, action_dim=2, n_obs_steps=2, horizon=8, n_action_steps=4)
    policy = DiffusionPolicy(spec, DiffusionPolicy.Config(unet=unet_preset("tiny"), scheduler="ddim",
                                                          num_inference_steps=4))
    norm = fit_normalizers({"state": np.array([[-1, -1, -1], [1, 1, 1]], np.float32),
                            "action": np.array([[-1, -1], [1, 1]], np.float32)}, {"state": "minmax", "action": "minmax"})
    config = {"policy": {"name": "diffusion", "config": {"unet": {"down_dims": [32, 64], "diffusion_step_embed_dim": 32},
                                                         "scheduler": "ddim", "num_inference_steps": 4}}}
    write_model_files(tmp_path, policy, norm, config, {"spec": spec.to_json()})
    obs = {"state": np.random.default_rng(0).uniform(-1, 1, (1, 2, 3)).astype(np.float32)}
    fp32 = robopolicy.load(tmp_path, seed=0).act(obs)
    int8 = robopolicy.load(tmp_path, seed=0, quantize="int8").act(obs)
    assert fp32.shape == int8.shape and not np.array_equal(fp32, int8)
    assert np.abs(fp32 - int8).max() < 0.1
    with pytest.raises(ValueError, match="quantize must be"):
        robopolicy.load(tmp_path, quantize="int4")
