"""The tiny ResNet and VGG DeepLab against independently written PyTorch twins holding the
same weights: outputs, running statistics, input gradients and every parameter gradient."""
import numpy as np
import pytest

from minilab import nn

torch = pytest.importorskip("torch")
from minilab.nn.torch_twins import twin_of  # noqa: E402  (needs torch)


def v3_model():
    """A tiny ResNet with DeepLab-v3's head (ASPPv3)."""
    backbone = nn.resnet((1, 1, 1, 1), width=8, rng=11, dtype=np.float64)
    return nn.DeepLab(backbone, nn.ASPPv3(backbone.out_channels, 5, rates=(2, 4), width=8, dropout=0.0, rng=12,
                                          dtype=np.float64))


def frozen_model():
    """The tiny ResNet with frozen batch norm on made-up running statistics, and other
    eps and momentum in its head."""
    model = nn.deeplab("tiny-resnet-aspp", num_classes=5, dropout=0.0, dtype=np.float64, seed=11, frozen_bn=True)
    g = np.random.default_rng(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[:] = g.standard_normal(m.running_mean.shape)
            m.running_var[:] = g.uniform(0.5, 2, m.running_var.shape)
            m.eps, m.momentum = (1e-2, 0.3) if m.frozen else (1e-3, 0.5)
    return model


@pytest.mark.parametrize("preset, hidden", [("tiny-resnet-aspp", 32), ("tiny-resnet-aspp", None),
                                            ("tiny-vgg-largefov", 32), ("aspp-v3", None), ("frozen", None)])
def test_nn_torch_twin_same_outputs_and_gradients(preset, hidden, rng):
    model = (v3_model() if preset == "aspp-v3" else frozen_model() if preset == "frozen" else
             nn.deeplab(preset, num_classes=5, hidden=hidden, dropout=0.0, dtype=np.float64, seed=11))
    twin = twin_of(model)
    assert set(twin.state_dict()) == set(model.state_dict())
    x = rng.standard_normal((2, 3, 57, 49))
    tx = torch.from_numpy(x.copy()).requires_grad_(True)

    # training mode: batch statistics, running statistics updated alike
    y = model.forward(x)
    ty = twin(tx)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-9, atol=1e-10)
    dout = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(dout)
    ty.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-8, atol=1e-10)
    grads = {name: p.grad for name, p in model.named_parameters()}
    for name, p in twin.named_parameters():
        expected = p.grad.numpy() if p.requires_grad else 0  # frozen batch norm: no gradient
        np.testing.assert_allclose(grads[name], expected, rtol=1e-8, atol=1e-10, err_msg=name)
    for name, value in twin.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[name], value.numpy(), rtol=1e-12, err_msg=name)

    # evaluation mode: running statistics
    model.eval(), twin.eval()
    with torch.no_grad():
        np.testing.assert_allclose(model.forward(x), twin(torch.from_numpy(x)).numpy(), rtol=1e-9, atol=1e-10)


def test_nn_torch_weights_load_into_minilab(rng, tmp_path):
    """The other direction: a torch model's state_dict, saved as .pth, loads by name."""
    model = nn.deeplab("tiny-resnet-aspp", num_classes=3, dropout=0.0, seed=1).eval()
    twin = twin_of(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.normal_(0, 0.1)
        for name, b in twin.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2)
    twin.eval()
    torch.save(twin.state_dict(), tmp_path / "twin.pth")
    model.load_state_dict(nn.load_weights(tmp_path / "twin.pth"))
    x = rng.standard_normal((1, 3, 41, 41)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(model.forward(x), twin(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
