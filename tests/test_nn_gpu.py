"""The models on a GPU (CuPy): the same outputs and gradients as on the CPU, weights moved
and saved across devices. Skipped without a CUDA GPU and CuPy."""
import numpy as np
import pytest

from minilab import backend, nn

pytestmark = pytest.mark.gpu


def test_nn_gpu_model_matches_cpu(tmp_path, rng):
    cpu = nn.deeplab("tiny-resnet-aspp", num_classes=3, dropout=0.0, dtype=np.float64, seed=2)
    gpu = nn.deeplab("tiny-resnet-aspp", num_classes=3, dropout=0.0, dtype=np.float64, seed=2).to("gpu")
    assert all(backend.is_gpu_array(p.data) and backend.is_gpu_array(p.grad) for p in gpu.parameters())
    x = rng.standard_normal((2, 3, 41, 41))
    for a, b in [(cpu, gpu), (nn.MultiScale(cpu), nn.MultiScale(gpu))]:
        y = a.forward(x)
        yg = b.forward(backend.to_device(x, "gpu"))
        np.testing.assert_allclose(backend.to_numpy(yg), y, rtol=1e-9, atol=1e-10)
        dout = rng.standard_normal(y.shape)
        a.zero_grad(), b.zero_grad()
        dx = a.backward(dout)
        dxg = b.backward(backend.to_device(dout, "gpu"))
        np.testing.assert_allclose(backend.to_numpy(dxg), dx, rtol=1e-8, atol=1e-10)
        for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            np.testing.assert_allclose(backend.to_numpy(q.grad), p.grad, rtol=1e-8, atol=1e-10, err_msg=name)
    nn.save_weights(gpu.state_dict(), tmp_path / "gpu.npz")
    cpu.load_state_dict(nn.load_weights(tmp_path / "gpu.npz"))
    gpu.load_state_dict(cpu.state_dict())
    assert backend.is_gpu_array(gpu.backbone.bn1.running_mean)


def test_nn_gpu_dropout_draws_on_the_gpu(rng):
    layer = nn.Dropout2d(0.5, rng=1)
    y = layer.forward(backend.to_device(np.ones((2, 4, 8, 8), np.float32), "gpu"))
    assert backend.is_gpu_array(y)
    assert set(np.unique(backend.to_numpy(y))) <= {0.0, 2.0}
