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


def same_outputs(model, twin, x):
    """One forward of both, without gradients: the outputs agree."""
    y = model.forward(x)
    with torch.no_grad():
        ty = twin(torch.from_numpy(x))
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-9, atol=1e-10)


def same_outputs_and_gradients(model, twin, x, rng):
    """One forward and backward of both: outputs, the input's gradient and every parameter's
    agree (a frozen batch norm's parameters get none in torch and zeros in minilab)."""
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    y, ty = model.forward(x), twin(tx)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-9, atol=1e-10)
    dout = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(dout)
    ty.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-8, atol=1e-10)
    grads = {name: p.grad for name, p in model.named_parameters()}
    for name, p in twin.named_parameters():
        expected = p.grad.numpy() if p.requires_grad else 0
        np.testing.assert_allclose(grads[name], expected, rtol=1e-8, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("preset, hidden", [("tiny-resnet-aspp", 32), ("tiny-resnet-aspp", None),
                                            ("tiny-vgg-largefov", 32), ("aspp-v3", None), ("frozen", None)])
def test_nn_torch_twin_same_outputs_and_gradients(preset, hidden, rng):
    model = (v3_model() if preset == "aspp-v3" else frozen_model() if preset == "frozen" else
             nn.deeplab(preset, num_classes=5, hidden=hidden, dropout=0.0, dtype=np.float64, seed=11))
    twin = twin_of(model)
    assert set(twin.state_dict()) == set(model.state_dict())
    x = rng.standard_normal((2, 3, 57, 49))
    same_outputs_and_gradients(model, twin, x, rng)  # training mode: batch statistics, updated alike
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


def test_nn_torch_twin_copies_batch_norm_momentum_and_eps(rng):
    """The twin takes each batch norm's momentum and eps from the minilab layer: with
    torch's defaults (0.1, 1e-5) the running statistics would move by other amounts (and
    the outputs differ) once the minilab layers use others."""
    model = v3_model()
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert layers and not any(m.frozen for m in layers)
    for m in layers:
        m.eps, m.momentum = 1e-2, 0.7
    twin = twin_of(model)
    same_outputs(model, twin, rng.standard_normal((3, 3, 41, 33)))
    state = twin.state_dict()
    for name, value in model.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            assert not np.allclose(value, 0 if name.endswith("mean") else 1), name  # they did move
            np.testing.assert_allclose(value, state[name].numpy(), rtol=1e-12, atol=1e-14, err_msg=name)


def test_nn_torch_twin_frozen_batch_norm_stays_frozen_after_train(rng):
    """A frozen minilab batch norm becomes a twin layer that stays on its running
    statistics when the twin is put back in training mode (``twin.train()``, as a training
    loop does after a validation): were it to switch to batch statistics, the outputs would
    differ and its running statistics would move. The unfrozen head beside it does train."""
    backbone = nn.resnet((1, 1, 1, 1), width=8, frozen_bn=True, rng=11, dtype=np.float64)
    head = nn.ASPPv3(backbone.out_channels, 5, rates=(2, 4), width=8, dropout=0.0, rng=12, dtype=np.float64)
    model = nn.DeepLab(backbone, head)
    g = np.random.default_rng(3)
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[:] = g.standard_normal(m.running_mean.shape)
            m.running_var[:] = g.uniform(0.5, 2, m.running_var.shape)
    before = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    twin = twin_of(model)
    model.eval(), twin.eval()
    model.train(), twin.train()  # back to training: the frozen layers must not follow
    frozen = {path for path, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.frozen}
    assert frozen and all(not twin.get_submodule(path).training for path in frozen)
    x = rng.standard_normal((2, 3, 57, 49))
    for _ in range(2):
        same_outputs(model, twin, x)
    state = twin.state_dict()
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value, state[name].numpy(), rtol=1e-12, err_msg=name)
        path = name.rpartition(".")[0]
        if path in frozen:  # running statistics and batch count as they were, in both
            np.testing.assert_array_equal(value, before[name], err_msg=name)
        elif name.endswith("running_mean"):
            assert not np.array_equal(value, before[name]), name  # the head's batch norms trained


@pytest.mark.parametrize("backbone, kernel, rates, hidden", [("vgg", 4, (4, 8), 16), ("vgg", 7, (2,), 16),
                                                              ("resnet", 4, (2, 4), None)])
def test_nn_torch_twin_of_an_fc6_of_another_kernel_size(backbone, kernel, rates, hidden, rng):
    """Table 1's fc6 variants (4×4, 7×7): the twin builds fc6 with the minilab layer's
    kernel size, padding and rate; a twin that assumed 3×3 could not load the weights, or
    would pad the map to another size."""
    if backbone == "vgg":
        model = nn.deeplab_vgg16(5, width=0.125, depth=(1,) * 5, rates=rates, hidden=hidden, kernel_size=kernel,
                                 dropout=0.0, seed=11, dtype=np.float64)
    else:
        bb = nn.resnet((1, 1, 1, 1), width=8, rng=11, dtype=np.float64)
        model = nn.DeepLab(bb, nn.ASPP(bb.out_channels, 5, rates, hidden, kernel_size=kernel, dropout=0.0, rng=12,
                                       dtype=np.float64))
    twin = twin_of(model)
    for i, branch in enumerate(model.head.branches):
        fc6, tfc6 = branch.fc6, twin.head.branches[i].fc6
        assert tfc6.kernel_size == (kernel, kernel)
        assert (tfc6.padding, tfc6.dilation) == (fc6.padding, (fc6.rate,) * 2) == ((rates[i] * (kernel - 1) // 2,) * 2,
                                                                                    (rates[i],) * 2)
    same_outputs_and_gradients(model, twin, rng.standard_normal((2, 3, 57, 49)), rng)
